"""Issue-18 figure: reads split over threads when the input is the bottleneck. ``tilewise run`` with the
1x1 TorchScript model (the model costs almost nothing, so decoding the deflate tiles is the job's
speed) with the block read ahead on one thread against several (``TILEWISE_READ_THREADS``), each run
in its own fresh process, alternating; prints wall, the blocks phase and the read and model stages.

    .venv/bin/python benchmarks/bench_overlap.py [--edge 4096] [--pairs 2] [--threads 1 4]

The outputs of both sides are byte-identical (tests/pipeline/execution/test_overlap.py). The scene is
the real Landsat RGB resampled and mirrored to ``edge``² (benchmarks/out/, not committed). On a
shared 2-core machine compare medians, and read the load average printed with each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, make_conv1x1_bundle, make_scene

OUT = ROOT / "benchmarks" / "out"


def one(scene: Path, bundle: Path, threads: int) -> dict:
    out = OUT / f"overlap-{threads}"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TILEWISE_READ_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "flows.cli", "run", str(scene), str(out), "--model", str(bundle)]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(done.stdout + done.stderr)
    (report,) = out.glob("*_report.json")
    t = json.loads(report.read_text())["timings_s"]
    shutil.rmtree(out, ignore_errors=True)
    stages = {k: t.get(k) for k in ("blocks_s", "read_s", "model_s")}
    return {"threads": threads, "wall_s": round(wall, 2), **stages, "load": round(os.getloadavg()[0], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edge", type=int, default=4096)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--threads", type=int, nargs=2, default=[1, 4])
    args = parser.parse_args()
    scene = make_scene(OUT / f"landsat_{args.edge}.tif", args.edge)
    bundle = make_conv1x1_bundle(OUT / "conv1x1")
    blocks: dict[int, list[float]] = {t: [] for t in args.threads}
    for pair in range(args.pairs):
        for threads in args.threads if pair % 2 == 0 else args.threads[::-1]:
            figure = one(scene, bundle, threads)
            blocks[threads].append(figure["blocks_s"])
            print(json.dumps(figure), flush=True)
    a, b = args.threads
    ratio = statistics.median(blocks[a]) / statistics.median(blocks[b])
    print(f"{args.edge}²: blocks phase, {a} read thread(s) / {b}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
