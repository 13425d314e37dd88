"""Issue-18 figure: a snappy one-off run. ``tilewise run`` on one small scene, minus ``tilewise --help``.

    .venv/bin/python benchmarks/bench_startup.py [--repeats 5] [--scene samples/s2] [--model bundles/s2-water]
        [--onnx] [--prefect] [--no-compile]

Each command runs in its own fresh process (``python -m flows.cli``, this checkout first on the path),
the two alternating, each run into a fresh output folder; prints each wall time, the medians and
the median of the paired differences (target: <= 1.5 s) and the load average before and after (on a
shared machine the figures are inflated by the others' work). ``--prefect`` measures the tracked flow run.
``--onnx`` first exports the model once (``tilewise bundle export``) to a temporary ``.onnx`` file and
runs that instead: the same net, run by ONNX Runtime.

The checkout's own modules are byte-compiled first (``compileall``, into the ignored ``__pycache__``
folders), as any earlier run leaves them and an installed wheel ships them; with
``PYTHONDONTWRITEBYTECODE`` set (as on the machines this was measured on) an editable checkout would
otherwise compile every module it imports on every command, the run's few hundred more than ``--help``'s
(``--no-compile`` keeps that, and says so in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, env=env)
    took = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"failed: tilewise {' '.join(args)}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scene", default=str(ROOT / "samples/s2"))
    parser.add_argument("--model", default=str(ROOT / "bundles/s2-water"))
    parser.add_argument("--prefect", action="store_true", help="run as a tracked Prefect flow run")
    parser.add_argument("--onnx", action="store_true", help="export the model to ONNX once and run that")
    parser.add_argument("--no-compile", action="store_true", help="do not byte-compile the checkout first")
    args = parser.parse_args()
    extra = ["--prefect"] if args.prefect else []
    if not args.no_compile:
        packages = [str(ROOT / p) for p in ("pipeline", "models", "flows")]
        subprocess.run([sys.executable, "-m", "compileall", "-q", *packages], check=True)
    keep = tempfile.TemporaryDirectory(prefix="tw-bench-startup-model-")
    model = args.model
    if args.onnx:
        model = str(Path(keep.name) / f"{Path(args.model).name}.onnx")
        wall(["bundle", "export", args.model, "--onnx", model])
    load_before = os.getloadavg()
    rows = []
    for i in range(args.repeats + 1):  # the first pair warms the page cache and is not counted
        t: dict[str, float] = {}
        out = Path(tempfile.mkdtemp(prefix="tw-bench-startup-"))
        try:
            for who in ("help", "run") if i % 2 == 0 else ("run", "help"):
                if who == "help":
                    t[who] = wall(["--help"])
                else:
                    t[who] = wall(["run", args.scene, str(out / "o"), "-m", model, *extra])
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if i:
            rows.append(t)
    diffs = [r["run"] - r["help"] for r in rows]
    print(
        json.dumps(
            {
                "scene": args.scene,
                "model": args.model,
                "onnx": args.onnx,
                "prefect": args.prefect,
                "byte_compiled": not args.no_compile,
                "help_s": [round(r["help"], 2) for r in rows],
                "run_s": [round(r["run"], 2) for r in rows],
                "median_help_s": round(statistics.median(r["help"] for r in rows), 2),
                "median_run_s": round(statistics.median(r["run"] for r in rows), 2),
                "median_run_minus_help_s": round(statistics.median(diffs), 2),
                "target_met": statistics.median(diffs) <= 1.5,
                "loadavg_1_5_15_before": [round(x, 2) for x in load_before],
                "loadavg_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
