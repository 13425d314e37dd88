"""Engine figures for issue 2: speed against MONAI (paired, alternating) and flat memory.

.venv/bin/python benchmarks/bench_engine.py speed [--pairs 7] [--runs 5] [--case 2d|3d]
.venv/bin/python benchmarks/bench_engine.py memory            # 4096² and 16384², one process each
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from pipeline import infer_array, infer_labels

CASES = {
    "2d": ("2d 2048² roi 256", 2, (1, 2048, 2048), (256, 256), (16, 32, 64, 128)),
    "3d": ("3d 160³ roi 96", 3, (1, 160, 160, 160), (96, 96, 96), (8, 16, 32, 64)),
}


def speed_one(case: str, who: str, runs: int) -> None:
    """One side of one pair, in its own process: a warm-up run, then the median of ``runs``."""
    torch.set_num_threads(2)
    _, dims, shape, roi, chans = CASES[case]
    torch.manual_seed(0)
    net = UNet(dims, shape[0], 2, channels=chans, strides=(2,) * (len(chans) - 1)).eval()
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    xt = torch.from_numpy(x)[None]
    times = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        if who == "ours":
            infer_array(x, net, patch_size=roi, overlap=0.25, batch_size=4)
        else:
            with torch.inference_mode():
                sliding_window_inference(xt, roi, 4, net, overlap=0.25, mode="gaussian")
        times.append(time.perf_counter() - t)
    print(json.dumps(statistics.median(times[1:])), flush=True)


def speed(pairs: int, runs: int, only: str) -> None:
    """Paired, alternating runs; each side of a pair in a fresh process.

    Sharing one process let each side change the other's conditions (glibc's heap, OpenMP's idle
    threads): MONAI ran up to 1.3x slower right after our runs than before them. Fresh processes
    take that away; pairing and alternating the order take out the drift of a shared VM.
    """
    for case, (name, *_rest) in CASES.items():
        if only not in ("all", case):
            continue
        ours, theirs = [], []
        for i in range(pairs):
            order = ("ours", "monai") if i % 2 == 0 else ("monai", "ours")
            got = {}
            for who in order:
                cmd = [sys.executable, __file__, "speed-one", case, who, str(runs)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                got[who] = json.loads(out.strip().splitlines()[-1])
            ours.append(got["ours"])
            theirs.append(got["monai"])
        ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
        print(
            json.dumps(
                {
                    "case": name,
                    "ours_median_s": round(statistics.median(ours), 3),
                    "monai_median_s": round(statistics.median(theirs), 3),
                    "median_ratio": round(statistics.median(ratios), 3),
                    "ratios": [round(r, 3) for r in ratios],
                    "pairs": pairs,
                    "runs_per_side": runs,
                }
            ),
            flush=True,
        )


def make_input(edge: int, workdir: str) -> None:
    """The zarr input, written in its own process so its buffers never count in the run's peak."""
    import zarr

    src = zarr.create_array(
        store=f"{workdir}/in-{edge}.zarr", shape=(1, edge, edge), dtype="float32", chunks=(1, 1024, 1024)
    )
    rng = np.random.default_rng(0)
    for r in range(0, edge, 1024):
        src[:, r : r + 1024] = rng.normal(size=(1, min(1024, edge - r), edge)).astype(np.float32)


def memory_one(edge: int, workdir: str) -> None:
    """Labels variant on a zarr-backed single-band edge² scene; prints peak RSS (one process per size)."""
    import resource

    import zarr

    torch.set_num_threads(2)
    src = zarr.open_array(store=f"{workdir}/in-{edge}.zarr", mode="r")
    dst = zarr.create_array(
        store=f"{workdir}/out-{edge}.zarr", shape=(edge, edge), dtype="uint8", chunks=(1024, 1024)
    )
    torch.manual_seed(0)
    net = UNet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2)).eval()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    infer_labels(src, net, patch_size=256, overlap=0.25, batch_size=8, block_size=1024, out=dst)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "edge": edge,
                "peak_rss_mb": round(peak),
                "rss_before_run_mb": round(base),
                "seconds": round(time.perf_counter() - t, 1),
            }
        ),
        flush=True,
    )


def memory(edges: list[int]) -> None:
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for edge in edges:
            subprocess.run([sys.executable, __file__, "make-input", str(edge), workdir], check=True)
            out = (
                subprocess.run(
                    [sys.executable, __file__, "memory-one", str(edge), workdir],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            print(out, flush=True)
            results.append(json.loads(out))
    small, large = results[0]["peak_rss_mb"], results[-1]["peak_rss_mb"]
    print(json.dumps({"ratio_large_over_small": round(large / small, 3), "below_2gb": large < 2048}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("--pairs", type=int, default=7)
    sp.add_argument("--runs", type=int, default=5, help="timed runs per process, after one warm-up")
    sp.add_argument("--case", choices=["all", "2d", "3d"], default="all")
    one = sub.add_parser("speed-one")
    one.add_argument("case", choices=list(CASES))
    one.add_argument("who", choices=["ours", "monai"])
    one.add_argument("runs", type=int)
    m = sub.add_parser("memory")
    m.add_argument("--edges", type=int, nargs="+", default=[4096, 16384])
    for name in ("memory-one", "make-input"):
        one = sub.add_parser(name)
        one.add_argument("edge", type=int)
        one.add_argument("workdir")
    args = parser.parse_args()
    if args.cmd == "speed":
        speed(args.pairs, args.runs, args.case)
    elif args.cmd == "speed-one":
        speed_one(args.case, args.who, args.runs)
    elif args.cmd == "memory":
        memory(args.edges)
    elif args.cmd == "make-input":
        make_input(args.edge, args.workdir)
    else:
        memory_one(args.edge, args.workdir)
