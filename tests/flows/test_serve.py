"""A served deployment against a real ``prefect server`` on 127.0.0.1: a scheduled run completes; a
one-off ``tilewise run`` with PREFECT_API_URL set reports to the same server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tests.flows.conftest import free_port, keys, stop

REPO = Path(__file__).resolve().parents[2]
SERVER = Path(__file__).with_name("prefect_server.py")  # `prefect server start`, see its docstring


def _wait_healthy(api: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "prefect server exited"
        try:
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("prefect server did not become healthy")


COMPLETED = {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}


def _runs(api: str, body: dict) -> list[dict]:
    return httpx.post(f"{api}/flow_runs/filter", json={**body, "limit": 20}, timeout=10).json()


def test_served_bucket_deployment_completes_a_scheduled_run(tmp_path, data, s3, bucket, small_bundle):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_UI_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
    )
    tenth = data / "geo/rasterio/rgb-byte-tenth.tif"
    s3.upload_file(str(tenth), bucket, "in/a.tif")
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {"input": f"s3://{bucket}/in", "output": f"s3://{bucket}/out", "model": str(small_bundle)}
        )
    )
    with (tmp_path / "server.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, str(SERVER), "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_healthy(api, server, 120)
        client_env = {**env, "PREFECT_API_URL": api, "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
        with (tmp_path / "serve.log").open("w") as log:
            serve = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "flows.cli",
                    "serve",
                    "-c",
                    str(job),
                    "--interval",
                    "5",
                    "--name",
                    "served-test",
                ],
                cwd=REPO,
                env=client_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        done: list[dict] = []
        try:
            deadline = time.time() + 150
            while time.time() < deadline and not done:
                assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                done = _runs(api, {"deployments": {"name": {"any_": ["served-test"]}}, **COMPLETED})
                time.sleep(1)
        finally:
            stop(serve, group=True)
        assert done, (tmp_path / "serve.log").read_text()[-3000:]
        assert done[0]["auto_scheduled"] is True
        assert "out/a_labels.tif" in keys(s3, bucket) and "out/a_report.json" in keys(s3, bucket)

        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "flows.cli",
                "run",
                str(tenth),
                str(tmp_path / "o"),
                "-m",
                str(small_bundle),
            ],
            cwd=REPO,
            env=client_env,
            capture_output=True,
            text=True,
        )
        assert cli.returncode == 0, cli.stderr
        assert len(_runs(api, {"flows": {"name": {"any_": ["tilewise-folder"]}}, **COMPLETED})) == 1
    finally:
        stop(server, group=True)
