"""A short run's start-up and end: the collector is off while the job's modules load, and a finished
plain run ends at once, yet still runs its atexit handlers and flushes what it printed."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from flows.cli.app import app
from flows.cli.process import settled_start

ROOT = Path(__file__).resolve().parents[3]

QUICK_END = """
import atexit, pathlib, sys, tempfile
from flows.cli.process import allow_quick_end, end_now_if_allowed
marker = pathlib.Path(sys.argv[1])
atexit.register(lambda: marker.write_text("atexit ran"))
kept = tempfile.TemporaryDirectory()  # its cleanup is an atexit finaliser
print(kept.name, end="")  # still buffered: stdout is a pipe
end_now_if_allowed(0)  # not allowed yet: returns
allow_quick_end()
try:
    end_now_if_allowed(3)
finally:
    sys.stderr.write("unreachable: no unwinding after the end")
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_a_quick_end_keeps_exit_code_output_atexit_and_temporary_cleanup(tmp_path):
    marker = tmp_path / "marker"
    done = _python(QUICK_END, str(marker))
    assert done.returncode == 3, done.stderr
    assert "unreachable" not in done.stderr  # ended inside end_now_if_allowed
    assert done.stdout and not Path(done.stdout).exists()  # printed (flushed), and the folder removed
    assert marker.read_text() == "atexit ran"


def test_start_up_objects_are_frozen_until_the_command_returns():
    assert gc.isenabled() and gc.get_freeze_count() == 0
    with settled_start() as settle:
        assert not gc.isenabled()
        made = [[i] for i in range(1000)]  # tracked by the collector
        settle()
        assert gc.isenabled() and gc.get_freeze_count() >= len(made)
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_a_run_invoked_in_process_returns_with_the_collector_as_it_was(tmp_path, data, bundle_factory):
    bundle = bundle_factory(2, 3, ["a", "b"], 32, [4, 8])
    args = ["run", str(data / "geo/rasterio/rgb-byte-tenth.tif"), str(tmp_path / "o"), "-m", str(bundle)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "rgb-byte-tenth_labels.tif").is_file()
    assert gc.isenabled() and gc.get_freeze_count() == 0
