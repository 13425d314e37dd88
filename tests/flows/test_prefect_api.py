"""Where flows report (flows/prefect_api.py): a temporary server that does not come up in time is one
clear line from the real CLI, never a traceback, and leaves no server process behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_temporary_server_start_up_timeout_is_one_line(tmp_path, data, small_bundle):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    # a real temporary server given far less time than it needs, as on a machine that is busy
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "home"), COLUMNS="300",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1")  # fmt: skip
    scene = data / "geo/rasterio/rgb-byte-tenth.tif"
    cli = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(scene), str(tmp_path / "o"), "-m", str(small_bundle),
         "--prefect"],  # a plain run starts no server; a tracked one does
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = cli.stdout + cli.stderr
    assert cli.returncode == 7, output  # ExecutionError
    assert "Traceback" not in output and "RuntimeError" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "did not start within 1 s" in errors[0] and "set PREFECT_API_URL" in errors[0]
    assert "retry" in errors[0]
    assert not (tmp_path / "o" / "rgb-byte-tenth_labels.tif").exists()


def test_a_bad_prefect_setting_is_one_line_naming_the_variable(tmp_path, data, small_bundle):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "home"), COLUMNS="300",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="soon")  # fmt: skip
    scene = data / "geo/rasterio/rgb-byte-tenth.tif"
    cli = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(scene), str(tmp_path / "o"), "-m", str(small_bundle),
         "--prefect"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = cli.stdout + cli.stderr
    assert cli.returncode == 2, output  # ConfigError
    assert "Traceback" not in output, output
    (error,) = [line for line in output.splitlines() if line.startswith("error:")]
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in error and "'soon'" in error
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
