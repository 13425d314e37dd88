"""A plain local one-off run runs the job skeleton without Prefect; tracked runs stay flow runs."""

from __future__ import annotations

import json

import pytest

from flows.oneoff import choose_runner, run_plain_job, tracked
from pipeline.job.config import load_config
from tests.flows.cli.test_startup import imported


@pytest.mark.parametrize(
    ("output", "orchestrator", "api", "expected"),
    [
        ("/tmp/out", "auto", None, False),
        ("/tmp/out", "auto", "http://127.0.0.1:4200/api", True),
        ("/tmp/out", "prefect", None, True),
        ("/tmp/out", "none", "http://127.0.0.1:4200/api", False),
        ("s3://bucket/out", "none", None, True),  # manifests and uploads are the bucket flow's
    ],
)
def test_who_runs_a_job(monkeypatch, output, orchestrator, api, expected):
    if api:
        monkeypatch.setenv("PREFECT_API_URL", api)
    else:
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
    cfg = load_config(None, {"output": output, "execution.orchestrator": orchestrator})
    assert tracked(cfg) is expected
    runner = choose_runner(cfg)
    if not expected:
        assert runner is run_plain_job
    else:
        assert runner.__module__ == ("flows.bucket" if output.startswith("s3://") else "flows.folder")


def test_plain_run_never_imports_prefect_and_says_so(tmp_path, data, bundle_factory, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    bundle = bundle_factory(2, 3, ["a", "b"], 32, [4, 8])
    out = tmp_path / "out"
    seen = imported("run", str(data / "geo/rasterio/rgb-byte-tenth.tif"), str(out), "-m", str(bundle))
    assert seen["code"] == 0, seen["out"]
    assert not [m for m in seen["heavy"] if m.split(".")[0] in ("prefect", "monai")]
    report = json.loads((out / "rgb-byte-tenth_report.json").read_text())
    assert report["orchestration"] == "none" and report["config"]["execution"]["orchestrator"] == "none"
    assert (out / "rgb-byte-tenth_labels.tif").stat().st_size > 0
