"""`tilewise --help` and `info` load no torch, Prefect or MONAI; `plan` loads what a run loads (it measures
that footprint for its memory estimate) but no MONAI: each runs in a fresh process and reports its imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("torch", "prefect", "monai", "distributed", "dask", "zarr", "nibabel")
PROBE = """
import json, runpy, sys
sys.argv = ["tilewise", *sys.argv[1:]]
try:
    runpy.run_module("flows.cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print("\\nMODULES " + json.dumps({"code": code, "heavy": heavy}))
"""


def imported(*args: str) -> dict:
    """Run the ``tilewise`` command in a new interpreter (this worktree first on the path)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    code = f"HEAVY = {HEAVY!r}\n{PROBE}"
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("MODULES "))
    return {**json.loads(line[len("MODULES ") :]), "out": done.stdout + done.stderr}


def test_help_imports_nothing_heavy():
    seen = imported("--help")
    assert seen["code"] == 0 and "run" in seen["out"]
    assert seen["heavy"] == []
    assert imported("run", "--help")["heavy"] == []


def test_info_on_a_geotiff_imports_only_its_reader(data):
    seen = imported("info", str(data / "geo/rasterio/rgb-byte-tenth.tif"))
    assert seen["code"] == 0 and "uint8" in seen["out"], seen["out"]
    assert seen["heavy"] == []


def test_plan_loads_the_model_but_no_monai(data, bundle_factory):
    edge = 32
    bundle = bundle_factory(2, 3, ["a", "b"], edge, [4, 8])
    seen = imported("plan", str(data / "geo/rasterio/rgb-byte-tenth.tif"), "-m", str(bundle))
    assert seen["code"] == 0, seen["out"]
    assert f"{edge}x{edge}" in seen["out"]  # the bundle's patch, read from model.yaml
    roots = {m.split(".")[0] for m in seen["heavy"]}
    assert "torch" in roots  # the plan's baseline holds the model, as a run does
    assert "monai" not in roots, seen["heavy"]
