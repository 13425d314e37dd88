"""Two runs on one output folder: real `tilewise run` processes started together, and a run SIGKILLed
while it holds a lease. Every scene is computed exactly once (windows counted), every run exits 0,
and the files are byte-identical to a single run's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.job.config import load_config
from pipeline.job.skeleton import run_job

from .catalogue import write_crop
from .conftest import leftovers
from .two_runs import cli_table, race_pausing_first_holder

ROOT = Path(__file__).resolve().parents[2]
SCENES = ("a", "b", "c")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, data) -> Path:
    folder = tmp_path_factory.mktemp("shared-in")
    write_crop(data, folder / "a.tif", size=160)
    for stem in SCENES[1:]:
        shutil.copy(folder / "a.tif", folder / f"{stem}.tif")
    return folder


def _settings(bundle: Path) -> dict[str, object]:
    return {"model": str(bundle), "tiling": {"block_size": [64]}, "outputs": {"quicklook": False}}


@pytest.fixture(scope="module")
def single(scenes, bundle2, tmp_path_factory) -> Path:
    """One run alone: the reference bytes."""
    out = tmp_path_factory.mktemp("single")
    over = {"input": str(scenes), "output": str(out), "model": str(bundle2), "tiling.block_size": [64],
            "outputs.quicklook": False}  # fmt: skip
    assert all(r.status == "ok" for r in run_job(load_config(None, over)))
    return out


def _grid_windows(out: Path, stem: str) -> int:
    plan = json.loads((out / f"{stem}_report.json").read_text())["plan"]
    return int(plan["windows_in_grid"])


def _cli_env(tmp: Path, name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=str(ROOT), COLUMNS="400", PREFECT_HOME=str(tmp / f"prefect-{name}"),
               DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")  # fmt: skip
    return env


def test_two_cli_runs_on_one_output_compute_each_scene_once(tmp_path, scenes, single, bundle2):
    out, cfg = tmp_path / "out", tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump(_settings(bundle2)))
    cmd = [sys.executable, "-m", "flows.cli", "run", str(scenes), str(out), "-c", str(cfg)]

    def lease_pid() -> int | None:  # the first run to take a lease is paused; the other must skip it
        leases = list((out / ".tilewise-work").glob("*.lease"))
        return json.loads(leases[0].read_text())["pid"] if leases else None

    runs, stopped, other = race_pausing_first_holder(
        cmd, lambda n: _cli_env(tmp_path, n), tmp_path, lease_pid
    )
    tables = {n: cli_table((tmp_path / f"{n}.log").read_text()) for n in runs}
    held = next(s for s in SCENES if tables[stopped][s]["status"] == "ok")  # the scene it held
    assert f"(pid {runs[stopped].pid})" in tables[other][held]["outputs / reason"]
    assert tables[other][held]["status"] == "skipped"
    assert "being processed by run" in tables[other][held]["outputs / reason"]
    for stem in SCENES:
        computed = [int(tables[n][stem]["windows"]) for n in runs]
        assert sorted(computed) == [0, _grid_windows(out, stem)], (stem, computed)  # exactly once
        assert sorted(tables[n][stem]["status"] for n in runs) == ["ok", "skipped"]
        name = f"{stem}_labels.tif"
        assert (out / name).read_bytes() == (single / name).read_bytes(), name
    assert not leftovers(out) and not (out / ".tilewise-work").exists()


def _unshare_pid() -> list[str]:
    """A prefix that runs a command in its own PID namespace, as if on another machine sharing the
    storage (its pid cannot be checked from here, so only the lease's heartbeat tells it is dead)."""
    cmd = ["unshare", "--pid", "--fork"]
    if shutil.which("unshare") is None or subprocess.run([*cmd, "true"], capture_output=True).returncode:
        pytest.skip("needs unshare --pid (root or user namespaces) to stand in for a second machine")
    return cmd


def test_sigkilled_lease_holder_is_waited_out_then_taken_over(tmp_path, scenes, single, bundle2):
    prefix = _unshare_pid()
    out, timeout = tmp_path / "out", 8.0
    over = {"input": str(scenes / "a.tif"), "output": str(out), "model": str(bundle2),
            "tiling.block_size": [64], "outputs.quicklook": False,
            "execution.lease_timeout_s": timeout}  # fmt: skip
    killer = f"{sys.executable} -m tests.hardening.killer compute 4 '{json.dumps(over)}'; exit $?"
    dead = subprocess.run([*prefix, "sh", "-c", killer], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    died = time.time()
    assert dead.returncode == 128 + signal.SIGKILL, dead.stderr[-2000:]
    lease_file = next((out / ".tilewise-work").glob("*.lease"))
    lease, beat = json.loads(lease_file.read_text()), lease_file.stat().st_mtime  # mtime: last heartbeat

    (busy,) = run_job(load_config(None, over))  # within the timeout: the scene is someone else's
    assert time.time() - beat < timeout, "the first rerun came too late to see a live lease"
    assert busy.status == "skipped" and f"(pid {lease['pid']})" in busy.reason, busy.reason
    assert busy.reason.startswith(f"being processed by run {lease['run_id']} on host ")

    t0 = time.time()
    (rerun,) = run_job(load_config(None, {**over, "execution.wait": True}))
    assert rerun.status == "ok", rerun.reason
    assert time.time() >= beat + timeout and t0 - died < timeout  # it waited the timeout out
    taken = rerun.report["lease"]["taken_over_from"]
    assert (taken["run_id"], taken["pid"]) == (lease["run_id"], lease["pid"])
    assert "took over the stale lease" in rerun.reason and rerun.report["resumed"] is True
    assert rerun.report["windows_computed"] < _grid_windows(out, "a")  # resumed, not redone
    assert json.loads((out / "a_report.json").read_text())["lease"]["taken_over_from"]["pid"] == lease["pid"]
    assert (out / "a_labels.tif").read_bytes() == (single / "a_labels.tif").read_bytes()
    assert not leftovers(out) and not (out / ".tilewise-work").exists()
