"""`tilewise serve` (flows/cli/serve.py): options are checked before Prefect is reached.
tests/flows/test_serve.py serves a real deployment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import flows.serve
from flows.cli.app import app

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def job(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    job = {"input": "s3://b/in", "output": "s3://b/out", "model": "bundles/s2-water"}
    path.write_text(yaml.safe_dump(job))
    return path


def test_bad_interval_is_one_line_with_exit_code_2(job, monkeypatch):
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("served despite a bad --interval")

    monkeypatch.setattr(flows.serve, "serve_bucket", never)
    for interval in ("0", "-5"):
        res = CliRunner().invoke(app, ["serve", "-c", str(job), "--interval", interval])
        assert res.exit_code == 2, res.output
        assert res.output == "error: --interval must be positive\n"


def test_serve_hands_the_job_and_options_to_the_bucket_flow(job, monkeypatch):
    seen: dict = {}
    monkeypatch.setattr(flows.serve, "serve_bucket", lambda cfg, **kw: seen.update(cfg=cfg, **kw))
    args = ["serve", "-c", str(job), "--cron", "*/15 * * * *", "-m", "other", "--limit", "2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert seen["cfg"].model == "other" and seen["cfg"].input == "s3://b/in"
    assert (seen["cron"], seen["interval"], seen["name"], seen["limit"]) == ("*/15 * * * *", None, None, 2)


def test_debug_shows_the_traceback(job):
    cmd = [sys.executable, "-m", "flows.cli", "--debug", "serve", "-c", str(job), "--interval", "0"]
    loud = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert loud.returncode != 0 and "Traceback (most recent call last)" in loud.stderr
    assert "pipeline.errors.ConfigError: --interval must be positive" in loud.stderr
