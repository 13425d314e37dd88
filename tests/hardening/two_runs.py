"""Two CLI runs on one output, the first lease holder paused (SIGSTOP) until the other has finished:
what a busy machine or a schedule firing twice does. Shared by the local and the S3 overlap tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli_table(text: str) -> dict[str, dict[str, str]]:
    """The run table of a CLI log, one row per scene (rich draws the header with heavy bars)."""
    lines = [line.replace("┃", "│") for line in text.splitlines() if line.count("│") + line.count("┃") >= 2]
    cells = [[c.strip() for c in line.strip().strip("│").split("│")] for line in lines]
    return {row["scene"]: row for row in (dict(zip(cells[0], r, strict=True)) for r in cells[1:])}


def race_pausing_first_holder(
    cmd: list[str], env_for: Callable[[str], dict[str, str]], logs: Path, lease_pid: Callable[[], int | None]
) -> tuple[dict[str, subprocess.Popen], str, str]:
    """Start runs "one" and "two" together; pause the first whose pid ``lease_pid`` reports until the
    other has exited 0, then let it finish (exit 0 too). Returns the runs, the paused one's name and
    the other's; each run's output is in ``logs/NAME.log``."""
    runs = {}
    for name in ("one", "two"):
        log = (logs / f"{name}.log").open("w")
        runs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env_for(name), stdout=log, stderr=subprocess.STDOUT)
    stopped = None
    try:
        deadline = time.time() + 420  # CLI start-up is slow on a loaded machine
        while time.time() < deadline and stopped is None:
            pid = lease_pid()
            if pid is not None:
                os.kill(pid, signal.SIGSTOP)
                stopped = next(n for n, p in runs.items() if p.pid == pid)
            assert all(p.poll() is None for p in runs.values()), "a run ended before taking any lease"
            time.sleep(0.05)
        assert stopped is not None, "no run took a lease"
        other = next(n for n in runs if n != stopped)
        assert runs[other].wait(timeout=300) == 0, (logs / f"{other}.log").read_text()[-3000:]
    finally:
        for p in runs.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
    assert runs[stopped].wait(timeout=300) == 0, (logs / f"{stopped}.log").read_text()[-3000:]
    return runs, stopped, other
