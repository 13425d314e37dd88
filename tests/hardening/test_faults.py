"""Faults: the whole job SIGKILLed at chosen points (blocks, seam merge, half-way through a COG, just
before the report), and a Dask worker SIGKILLed during the seam merge. In every case the rerun (or the
cluster's retry) gives byte-identical files to an uninterrupted run and leaves no temporary behind:
nothing is lost. Random kill times of the real CLI are soaked by ``benchmarks/soak_faults.py``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.tiling import BlockPlan
from pipeline.job.config import load_config
from pipeline.job.skeleton import run_job

from .catalogue import write_crop
from .conftest import finals, leftovers

ROOT = Path(__file__).resolve().parents[2]
FILES = ("crop_labels.tif", "crop_probabilities.tif")


def overrides(src: Path, out: Path, bundle: Path, **extra: object) -> dict[str, object]:
    return {
        "input": str(src),
        "output": str(out),
        "model": str(bundle),
        "tiling.block_size": [64],  # 3 x 3 blocks: seams everywhere
        "outputs.probabilities": True,
        "outputs.keep_work": True,
        "outputs.quicklook": False,
        **extra,
    }


@pytest.fixture(scope="module")
def crop(tmp_path_factory, data) -> Path:
    return write_crop(data, tmp_path_factory.mktemp("faults") / "crop.tif", size=160)


@pytest.fixture(scope="module")
def clean(crop, bundle2, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean")
    (result,) = run_job(load_config(None, overrides(crop, out, bundle2)))
    assert result.status == "ok", result.reason
    return out


def _same_as_clean(out: Path, clean: Path) -> None:
    for name in FILES:
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name
    assert (out / "crop_report.json").exists() and not leftovers(out)


@pytest.mark.parametrize(("point", "n"), [("compute", 4), ("merge", 5), ("outputs", 2), ("report", 1)])
def test_job_sigkilled_then_rerun_is_byte_identical(point, n, tmp_path, crop, clean, bundle2):
    out = tmp_path / "out"
    cfg = overrides(crop, out, bundle2)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.hardening.killer", point, str(n), json.dumps(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / "crop_report.json").exists()
    if point in ("compute", "merge"):
        assert not finals(out, "crop")  # nothing final before every block is done
    if point == "outputs":  # killed half-way through the probabilities COG: a partial temporary
        assert leftovers(out) and not (out / "crop_probabilities.tif").exists()
    (rerun,) = run_job(load_config(None, cfg))
    assert rerun.status == "ok", rerun.reason
    assert rerun.report["resumed"] is True
    state = json.loads(next(out.glob(".tilewise-work/*/state.json")).read_text())
    total = BlockPlan.build(state["shape"], state["roi"], state["overlap"], state["block"]).window_count
    assert rerun.report["windows_computed"] < total  # resumed, not redone
    _same_as_clean(out, clean)


PRELOAD = """
import os
import signal

import pipeline.execution.workstore as ws

if not hasattr(ws, "_tw_merge_armed"):  # a preload may run more than once per process
    ws._tw_merge_armed = True
    real = ws.WorkStore.mark_merged

    def mark_merged(self, index):
        try:  # the first merge on any worker of the cluster kills its process, once
            os.close(os.open(os.environ["TW_PHASE2_KILL"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return real(self, index)
        os.kill(os.getpid(), signal.SIGKILL)  # its chunk is written, its marker is not

    ws.WorkStore.mark_merged = mark_merged
"""


def test_worker_sigkilled_during_seam_merge_still_byte_identical(tmp_path, crop, clean, bundle2, monkeypatch):
    from tests.pipeline.execution.test_distributed import _start_cluster, _stop

    marker = tmp_path / "killed-in-merge"
    monkeypatch.setenv("TW_PHASE2_KILL", str(marker))
    preload = tmp_path / "merge_killer.py"
    preload.write_text(PRELOAD)
    procs, client = _start_cluster(tmp_path / "cluster", preload)
    try:
        out = tmp_path / "out"
        cluster = {"execution.scheduler": client.scheduler.address}
        cfg = load_config(None, overrides(crop, out, bundle2, **cluster))
        (result,) = run_job(cfg)
        assert marker.exists()  # a worker really died inside a seam merge
        assert result.status == "ok", result.reason
        _same_as_clean(out, clean)
        client.wait_for_workers(2, timeout=60)  # the nanny brought the worker back
    finally:
        _stop(procs, client)
    assert not [p for p in procs if p.poll() is None]
