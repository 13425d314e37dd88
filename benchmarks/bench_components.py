"""Issue-18 figure: ``--min-object-size`` keeps memory flat. Peak RSS of ``tilewise run`` with and
without the block-wise component clean-up, on the same scene and model, each run in its own fresh
process, the order alternating (target at 32768²: within 10 %).

    .venv/bin/python benchmarks/bench_components.py [--edges 8192 16384] [--pairs 1] [--min-size 64]
        [--workers N]

The scene is the real Landsat RGB resampled and mirrored to ``edge``² (benchmarks/out/, not
committed); the model is the issue's TorchScript 1x1 convolution, so the run is all I/O, blending and
post-processing. With ``--workers`` the blocks and the clean-up's per-block passes run on a local Dask
cluster, and the figure is the client's peak (the workers' is in the report's execution section).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, make_conv1x1_bundle, make_scene

OUT = ROOT / "benchmarks" / "out"


def _run(scene: Path, bundle: Path, out: Path, min_size: int, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "flows.cli", "run", str(scene), str(out), "--model", str(bundle)]
    if min_size:
        cmd += ["--min-object-size", str(min_size)]
    if workers:
        cmd += ["--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        sys.exit(done.stdout + done.stderr)
    (report,) = out.rglob("*_report.json")
    data = json.loads(report.read_text())
    shutil.rmtree(out, ignore_errors=True)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--pairs", type=int, default=1)
    parser.add_argument("--min-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    bundle = make_conv1x1_bundle(OUT / "conv1x1")
    for edge in args.edges:
        scene = make_scene(OUT / f"landsat_{edge}.tif", edge)
        peaks: dict[int, list[float]] = {0: [], args.min_size: []}
        for pair in range(args.pairs):
            order = (0, args.min_size) if pair % 2 == 0 else (args.min_size, 0)
            for size in order:
                report = _run(scene, bundle, OUT / f"components_{edge}_{size}", size, args.workers)
                peak = report["memory"]["peak_rss_mb"]
                peaks[size].append(peak)
                t = report["timings_s"]
                whole = t.get("blocks_s", 0) + t.get("outputs_s", 0)
                clean = t.get("clean_components_s", 0)
                line = (
                    f"{edge}² min-object-size={size}: peak {peak} MB, {whole:.1f} s (clean-up {clean:.1f} s)"
                )
                print(line, flush=True)
        without, with_ = max(peaks[0]), max(peaks[args.min_size])
        print(
            f"{edge}²: peak with clean-up / without = {with_ / without:.3f} ({with_:.0f} / {without:.0f} MB)"
        )


if __name__ == "__main__":
    main()
