"""`tilewise --help`, `info` and `plan` load no torch, Prefect or MONAI (nor Dask, zarr, nibabel): each
runs in a fresh process and reports its imports. The plan's baseline is measured once per install in a
child process and cached (flows/cli/baseline.py), so a plan never needs the run's modules itself.
A plain run loads no boto3 (unless AWS keys are set) and scans the installed entry points once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import rasterio
from typer.testing import CliRunner

from flows.cli.app import app

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("torch", "prefect", "monai", "distributed", "dask", "zarr", "nibabel")
PROBE = """
import atexit, importlib.metadata, json, runpy, sys
scan = importlib.metadata.entry_points
def report():  # at exit: a finished plain run ends with os._exit, after the atexit handlers
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
    groups = ("console_scripts", "numcodecs.codecs", "zarr.codecs", "fsspec.specs", "torch.backends")
    now = importlib.metadata.entry_points
    same = all(set(now(group=g)) == set(scan(group=g)) for g in groups) and set(now()) == set(scan())
    session = sys.modules.get("rasterio.session")
    print("\\nMODULES " + json.dumps({"heavy": heavy, "boto3": "boto3" in sys.modules,
        "rasterio_boto3": None if session is None else session.boto3 is not None,
        "one_scan": now is not scan, "same_entry_points": same}), flush=True)
atexit.register(report)
sys.argv = ["tilewise", *sys.argv[1:]]
runpy.run_module("flows.cli", run_name="__main__")
"""


def imported(*args: str, env: dict[str, str] | None = None) -> dict:
    """Run the ``tilewise`` command in a new interpreter (this worktree first on the path)."""
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": "250", **(env or {})}
    code = f"HEAVY = {HEAVY!r}\n{PROBE}"
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("MODULES "))
    return {**json.loads(line[len("MODULES ") :]), "code": done.returncode, "out": done.stdout + done.stderr}


def test_help_imports_nothing_heavy():
    seen = imported("--help")
    assert seen["code"] == 0 and "run" in seen["out"]
    assert seen["heavy"] == []
    assert imported("run", "--help")["heavy"] == []


def test_info_on_a_geotiff_imports_only_its_reader(data):
    seen = imported("info", str(data / "geo/rasterio/rgb-byte-tenth.tif"))
    assert seen["code"] == 0 and "uint8" in seen["out"], seen["out"]
    assert seen["heavy"] == []


def test_plan_imports_nothing_heavy_and_measures_its_baseline_once(data, bundle_factory, tmp_path):
    edge = 32
    bundle = bundle_factory(2, 3, ["a", "b"], edge, [4, 8])
    env = {"TILEWISE_CACHE_DIR": str(tmp_path / "cache")}
    args = ("plan", str(data / "geo/rasterio/rgb-byte-tenth.tif"), "-m", str(bundle))
    seen = imported(*args, env=env)
    assert seen["code"] == 0, seen["out"]
    assert f"{edge}x{edge}" in seen["out"]  # the bundle's patch, read from model.yaml
    assert seen["heavy"] == []  # neither torch, nor Prefect, nor MONAI
    (figure,) = json.loads((tmp_path / "cache" / "baseline.json").read_text()).values()
    assert 100 < figure < 2000  # a process that loaded torch, Prefect and the job (measured: 309 MB)
    again = imported(*args, env=env)  # from the cache now: the same table
    assert again["heavy"] == [] and _peak(again["out"]) == _peak(seen["out"])
    fixed = imported(*args, env={**env, "TILEWISE_BASELINE_MB": str(figure + 1000)})
    assert _peak(fixed["out"]) == _peak(seen["out"]) + 1000


def test_a_plain_run_loads_no_boto3_and_scans_entry_points_once(data, bundle_factory, tmp_path):
    bundle = bundle_factory(2, 3, ["a", "b"], 32, [4, 8])
    scene = data / "geo/rasterio/rgb-byte-tenth.tif"
    seen = imported("run", str(scene), str(tmp_path / "lean"), "-m", str(bundle))
    assert seen["code"] == 0, seen["out"]
    assert seen["boto3"] is False and seen["rasterio_boto3"] is False
    assert seen["one_scan"] and seen["same_entry_points"]  # one scan, and it answers as every scan would
    in_process = CliRunner().invoke(app, ["run", str(scene), str(tmp_path / "full"), "-m", str(bundle)])
    assert in_process.exit_code == 0, in_process.output
    lean, full = (tmp_path / d / "rgb-byte-tenth_labels.tif" for d in ("lean", "full"))
    with rasterio.open(lean) as a, rasterio.open(full) as b:
        assert (a.read() == b.read()).all() and a.profile == b.profile
    # with AWS keys in the environment rasterio builds boto3 sessions from them: it keeps boto3
    keyed = imported(
        "run", str(scene), str(tmp_path / "keyed"), "-m", str(bundle),
        env={"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"},
    )  # fmt: skip
    assert keyed["code"] == 0, keyed["out"]
    assert keyed["boto3"] is True and keyed["rasterio_boto3"] is True


def _peak(out: str) -> int:
    """The plan table's peak MB/worker (its row names the scene; COLUMNS is wide enough for one line)."""
    row = next(line for line in out.splitlines() if "rgb-byte-tenth" in line)
    cells = [c.strip() for c in row.strip().strip("│").split("│")]
    return int(cells[6])
