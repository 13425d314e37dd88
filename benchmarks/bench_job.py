"""Issue-3 figures: end-to-end speed (file in -> COG out vs pure model forward) and flat job memory.

    .venv/bin/python benchmarks/bench_job.py speed  [--edge 4096] [--pairs 3]
    .venv/bin/python benchmarks/bench_job.py memory [--edges 4096 16384]
Scenes are generated from the real Landsat RGB.byte.tif under benchmarks/out/ (not committed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, child_peak_rss_mb, make_bundle, make_scene

OUT = ROOT / "benchmarks" / "out"


def _forward_only(bundle_path: Path, windows: int, batch: int, patch: int) -> float:
    """The same number of windows through the same net, batched the same, with no I/O or blending
    (and the same CPU layer swaps and lanes as the job's predictor, so the ratio is the pipeline's
    overhead)."""
    from collections import deque

    from models.bundle import load_bundle
    from pipeline.engine.lanes import Lanes, lanes_for
    from pipeline.engine.subpixel import SubPixelUpsampling

    net = load_bundle(bundle_path).build()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(batch, 3, patch, patch)).astype(np.float32))
    lanes = Lanes(lanes_for(torch.get_num_threads(), batch * patch * patch))

    def one(n: int) -> np.ndarray:
        with torch.inference_mode(), SubPixelUpsampling(net):
            return torch.softmax(net(x[:n]), dim=1).numpy()

    t = time.perf_counter()
    in_flight: deque = deque()
    for start in range(0, windows, batch):
        in_flight.append(lanes.submit(one, min(batch, windows - start)))
        while len(in_flight) > lanes.count:
            in_flight.popleft().result()
    for future in in_flight:
        future.result()
    return time.perf_counter() - t


def speed(edge: int, pairs: int) -> None:
    from pipeline.job.config import load_config
    from pipeline.job.skeleton import run_job

    torch.set_num_threads(2)
    scene = make_scene(OUT / f"scene-{edge}.tif", edge)
    bundle = make_bundle(OUT / "bundle-e2e", 3, [32, 64, 128, 256])
    rows = []
    for i in range(pairs + 1):
        order = ["job", "forward"] if i % 2 == 0 else ["forward", "job"]
        t: dict[str, float] = {}
        for who in order:
            if who == "job":
                cfg = load_config(
                    None,
                    {
                        "input": str(scene),
                        "output": str(OUT / "e2e"),
                        "model": str(bundle),
                        "outputs.overwrite": True,
                        "execution.batch_size": 4,
                    },
                )
                start = time.perf_counter()
                (res,) = run_job(cfg)
                t["job"] = time.perf_counter() - start
                assert res.status == "ok", res.reason
                windows = res.report["windows_computed"]
            else:
                from pipeline.core.tiling import BlockPlan

                windows = BlockPlan.build((edge, edge), (256, 256), 0.25).window_count
                t["forward"] = _forward_only(bundle, windows, 4, 256)
        if i:
            rows.append(t)
    ratio = statistics.median(r["job"] / r["forward"] for r in rows)
    print(
        json.dumps(
            {
                "edge": edge,
                "windows": windows,
                "job_s": [round(r["job"], 2) for r in rows],
                "forward_s": [round(r["forward"], 2) for r in rows],
                "median_ratio": round(ratio, 3),
            }
        )
    )


def memory(edges: list[int]) -> None:
    bundle = make_bundle(OUT / "bundle-mem", 3, [8, 16, 32])
    results = {}
    for edge in edges:
        scene = make_scene(OUT / f"scene-{edge}.tif", edge)
        out = OUT / f"mem-{edge}"
        cmd = [sys.executable, str(Path(__file__)), "memory-one", str(scene), str(out), str(bundle)]
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        line = json.loads(done.stdout.strip().splitlines()[-1])
        line["seconds"] = round(time.perf_counter() - t, 1)
        results[edge] = line
        print(json.dumps({"edge": edge, **line}), flush=True)
    small, large = results[edges[0]]["peak_rss_mb"], results[edges[-1]]["peak_rss_mb"]
    print(json.dumps({"ratio_large_over_small": round(large / small, 3), "below_2gb": large < 2048}))


def memory_one(scene: str, out: str, bundle: str) -> None:
    """Runs the real CLI as a child and prints its peak RSS (this parent runs nothing else)."""
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        scene,
        out,
        "--model",
        bundle,
        "--overwrite",
        "--batch-size",
        "8",
    ]
    peak, _ = child_peak_rss_mb(cmd, cwd=str(ROOT))
    print(json.dumps({"peak_rss_mb": round(peak)}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--edge", type=int, default=4096)
    s.add_argument("--pairs", type=int, default=3)
    m = sub.add_parser("memory")
    m.add_argument("--edges", type=int, nargs="+", default=[4096, 16384])
    one = sub.add_parser("memory-one")
    for name in ("scene", "out", "bundle"):
        one.add_argument(name)
    args = parser.parse_args()
    if args.cmd == "speed":
        speed(args.edge, args.pairs)
    elif args.cmd == "memory":
        memory(args.edges)
    else:
        memory_one(args.scene, args.out, args.bundle)
