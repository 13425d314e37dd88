"""An honest plan: ``tilewise plan``'s peak RSS per worker against what ``tilewise run`` then measures,
each in a fresh process, on the demo's Sentinel-2 scene with the demo's bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env)


def test_plan_peak_is_within_a_quarter_of_the_run(tmp_path):
    scenes = ROOT / "samples" / "s2"
    opts = ["--model", str(ROOT / "bundles" / "s2-water"), "--polygons"]
    plan = _cli("plan", str(scenes), *opts)
    assert plan.returncode == 0, plan.stderr
    header, row = [
        [c.strip() for c in line.strip().strip("│┃").replace("┃", "│").split("│")]
        for line in plan.stdout.splitlines()
        if line.count("│") + line.count("┃") >= 2
    ]
    planned = float(dict(zip(header, row, strict=True))["peak MB/worker"])
    run = _cli("run", str(scenes), str(tmp_path / "out"), *opts)
    assert run.returncode == 0, run.stderr
    (report,) = (tmp_path / "out").glob("*_report.json")
    memory = json.loads(report.read_text())["memory"]
    measured = memory["peak_rss_mb"]
    assert abs(planned - measured) <= 0.25 * measured, (planned, memory)
    assert abs(memory["plan_peak_rss_mb"] - measured) <= 0.25 * measured, memory
