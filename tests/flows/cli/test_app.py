"""The `tilewise` app (flows/cli/app.py): every command mounted, `python -m flows.cli` and the console
script both reach it, and importing it stays cheap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from flows.cli.app import app

REPO = Path(__file__).resolve().parents[3]
COMMANDS = ("run", "plan", "info", "serve", "train", "evaluate", "bundle")


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)


def test_help_lists_every_command():
    res = CliRunner(env={"COLUMNS": "200"}).invoke(app, ["--help"])
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.output.splitlines() if line.startswith("│ ")]
    listed = [row[1] for row in rows if len(row) > 2]
    assert [c for c in listed if c in COMMANDS] == list(COMMANDS)
    assert "--debug" in res.output


def test_importing_the_app_loads_no_heavy_library():
    heavy = ("prefect", "torch", "rasterio", "monai")
    probe = f"import flows.cli.app, sys; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = _run([sys.executable, "-c", probe])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_module_and_console_script_run_the_same_app():
    for cmd in ([sys.executable, "-m", "flows.cli"], [str(Path(sys.executable).with_name("tilewise"))]):
        done = _run([*cmd, "bundle", "--help"])
        assert done.returncode == 0, done.stderr
        assert "Usage: tilewise bundle" in done.stdout and "init" in done.stdout
