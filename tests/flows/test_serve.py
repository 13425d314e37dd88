"""A served deployment against a real ``prefect server`` on 127.0.0.1, protected by its API auth
string: a scheduled run completes, the deployment carries its own concurrency limit, a one-off
``tilewise run`` with PREFECT_API_URL set reports to the same server, and the auth string is in no
log or output."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import yaml

from tests.flows.conftest import free_port, keys, stop

REPO = Path(__file__).resolve().parents[2]
SERVER = Path(__file__).with_name("prefect_server.py")  # `prefect server start`, see its docstring
PASSWORD = "tw-AUTH-sentinel-" + uuid.uuid4().hex[:12]
AUTH = ("admin", PASSWORD)  # the server's PREFECT_SERVER_API_AUTH_STRING is admin:PASSWORD


def _wait_healthy(api: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "prefect server exited"
        try:
            if httpx.get(f"{api}/health", timeout=2, auth=AUTH).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("prefect server did not become healthy")


COMPLETED = {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}


def _runs(api: str, body: dict) -> list[dict]:
    return httpx.post(f"{api}/flow_runs/filter", json={**body, "limit": 20}, timeout=10, auth=AUTH).json()


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
        PREFECT_SERVER_API_AUTH_STRING=f"admin:{PASSWORD}",
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
        client_env = {**env, "PREFECT_API_URL": api, "PREFECT_RUNNER_POLL_FREQUENCY": "2",
                      "PREFECT_API_AUTH_STRING": f"admin:{PASSWORD}"}  # fmt: skip
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
        # the server itself refuses a second concurrent run of the deployment (new ones are cancelled)
        (deployment,) = httpx.post(f"{api}/deployments/filter", json={"deployments": {"name": {"any_": [
            "served-test"]}}}, timeout=10, auth=AUTH).json()  # fmt: skip
        assert deployment["global_concurrency_limit"]["limit"] == 1, deployment
        assert deployment["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
        assert httpx.get(f"{api}/flow_runs/{done[0]['id']}", timeout=10).status_code == 401  # protected
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
        logs = [cli.stdout, cli.stderr, *(p.read_text() for p in tmp_path.glob("*.log"))]
        assert not [text for text in logs if PASSWORD in text]
    finally:
        stop(server, group=True)
