"""Issue-18 CUDA figures, one prepared script for a machine with a GPU (exits 0 with a message without).

    .venv/bin/python benchmarks/bench_cuda.py [--edge 8192] [--device cuda:0] [--repeats 3]

1. The predictor alone on a 2-D U-Net (init_bundle, features 32..256) and the 1x1 TorchScript model:
   windows/s for fp32, AMP bf16, AMP fp16, channels_last and torch.compile (each after a warm-up, the
   median of ``--repeats``), batches of 8 256² windows.
2. Batches in flight: the predictor fed from one or two lanes, one CUDA stream each (pinned buffers,
   non-blocking copies both ways), as ``BlockRunner`` feeds it: windows/s for 1 and 2 streams.
3. The whole command on an ``--edge``² scene (file in, COG out) with the 1x1 model, per option set,
   each in its own fresh process: wall, Mpx/s, and the report's stage timings, to see which stage
   feeds the GPU too slowly.
Scenes and bundles go under benchmarks/out/ (not committed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, child_peak_rss_mb, make_bundle, make_conv1x1_bundle, make_scene

OUT = ROOT / "benchmarks" / "out"
OPTIONS = {  # name -> (Predictor keywords, CLI flags)
    "fp32": ({"amp": False}, ["--amp", "off"]),
    "bf16": ({"amp": "bf16"}, ["--amp", "bf16"]),
    "fp16": ({"amp": "fp16"}, ["--amp", "fp16"]),
    "bf16+channels_last": ({"amp": "bf16", "channels_last": True}, ["--amp", "bf16", "--channels-last"]),
    "bf16+compile": ({"amp": "bf16", "compile": True}, ["--amp", "bf16", "--compile"]),
}


def predictor_figures(device: str, repeats: int) -> None:
    import numpy as np
    import torch

    from models.bundle import load_bundle
    from pipeline.engine.predictor import Predictor

    bundles = {
        "unet": make_bundle(OUT / "bundle-cuda-unet", 3, [32, 64, 128, 256]),
        "conv1x1": make_conv1x1_bundle(OUT / "bundle-conv1x1"),
    }
    batch = np.random.default_rng(0).normal(size=(8, 3, 256, 256)).astype(np.float32)
    for name, path in bundles.items():
        for option, (kwargs, _) in OPTIONS.items():
            predict = Predictor(
                load_bundle(path).build(device=device), device=device, activation="softmax", **kwargs
            )
            for _ in range(3):  # warm-up (and compilation)
                predict(batch)
            torch.cuda.synchronize()
            rates = []
            for _ in range(repeats):
                start, n = time.perf_counter(), 50
                for _ in range(n):
                    predict(batch)
                torch.cuda.synchronize()
                rates.append(n * len(batch) / (time.perf_counter() - start))
            print(
                json.dumps(
                    {"model": name, "option": option, "windows_per_s": round(statistics.median(rates), 1)}
                )
            )


def stream_figures(device: str, repeats: int) -> None:
    """Windows/s with 1 and 2 batches in flight (each on its own stream), fed as the runner feeds it."""
    from collections import deque

    import numpy as np
    import torch

    from models.bundle import load_bundle
    from pipeline.engine.lanes import Lanes
    from pipeline.engine.predictor import Predictor

    batch = np.random.default_rng(0).normal(size=(16, 3, 256, 256)).astype(np.float32)
    for name, path in (
        ("unet", make_bundle(OUT / "bundle-cuda-unet", 3, [32, 64, 128, 256])),
        ("conv1x1", make_conv1x1_bundle(OUT / "bundle-conv1x1")),
    ):
        for streams in (1, 2):
            predict = Predictor(load_bundle(path).build(device=device), device=device, activation="softmax",
                                amp="bf16", streams=streams)  # fmt: skip
            lanes = Lanes(predict.streams)
            rates = []
            for rep in range(repeats + 1):  # the first round warms up
                start, n, flight = time.perf_counter(), 40, deque()
                for _ in range(n):
                    flight.append(lanes.submit(predict, batch))
                    while len(flight) > predict.streams:
                        flight.popleft().result()
                while flight:
                    flight.popleft().result()
                torch.cuda.synchronize()
                if rep:
                    rates.append(n * len(batch) / (time.perf_counter() - start))
            figure = {"model": name, "streams": streams, "windows_per_s": round(statistics.median(rates), 1)}
            print(json.dumps(figure), flush=True)


def command_figures(edge: int, device: str) -> None:
    scene = make_scene(OUT / f"scene-{edge}.tif", edge)
    bundle = make_conv1x1_bundle(OUT / "bundle-conv1x1")
    for option, (_, flags) in OPTIONS.items():
        out = OUT / f"cuda-{option}"
        run = ["run", str(scene), str(out), "-m", str(bundle), "--overwrite"]
        cmd = [sys.executable, "-m", "flows.cli", *run, "--device", device, "--batch-size", "16", *flags]
        start = time.perf_counter()
        peak, _ = child_peak_rss_mb(cmd, cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - start
        (report,) = out.glob("*_report.json")
        timings = json.loads(report.read_text())["timings_s"]
        mpx = edge * edge / 1e6 / wall
        print(json.dumps({"option": option, "wall_s": round(wall, 2), "mpx_s": round(mpx, 1),
                          "peak_rss_mb": round(peak), "timings_s": timings}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edge", type=int, default=8192)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench_cuda: no CUDA device here; nothing measured (run it on a GPU machine)")
        return
    print(
        json.dumps({"gpu": torch.cuda.get_device_name(torch.device(args.device)), "torch": torch.__version__})
    )
    predictor_figures(args.device, args.repeats)
    stream_figures(args.device, args.repeats)
    command_figures(args.edge, args.device)


if __name__ == "__main__":
    main()
