"""ONNX Runtime against torch on CPU for the demo bundles, through the same engine (issue 17).

.venv/bin/python benchmarks/bench_onnx.py [--pairs 3] [--runs 3] [--threads 2]

Each bundle is exported once with ``tilewise bundle export``'s code path, then each side of each pair
runs in its own fresh process (order alternating, as the brief asks): ``infer_array`` over a real
scene with the bundle's patch, overlap and normalisation, a warm-up, then the median of ``runs``.
The scores of the two sides are compared too (max abs difference). Scenes: s2-water on the
Sentinel-2 stack (4 x 768 x 768 crop), mni-tissue on the MNI152 T1 (a 128 x 128 x 128 crop).

Measured on the 2-core shared VM under heavy load from other jobs (load average 10-17, so absolute
times are noisy; the ratio is the figure), ``--pairs 2 --runs 2``, 2 threads, ONNX Runtime 1.31 CPU:

    s2-water   (2-D 128², 4 x 768 x 768)    torch 13.04 s  onnx 10.47 s  0.80x  max |diff| 7.4e-6
    mni-tissue (3-D 64³, 128³ crop)          torch 36.91 s  onnx 25.77 s  0.70x  max |diff| 6.2e-6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
if not DATA.exists():  # a worktree one level deeper; as tests/conftest.py
    DATA = Path(os.environ.get("TILEWISE_DATA", "/work/shared/data"))
CASES = {
    "s2-water": (
        DATA / "geo/derived/S2A_T33UUU_20170216_L1C_B02-B03-B04-B08_10m.tif",
        (slice(0, 768), slice(0, 768)),
    ),
    "mni-tissue": (
        DATA / "medical/nilearn/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        (slice(35, 163), slice(50, 178), slice(30, 158)),
    ),
}


def scene(name: str) -> np.ndarray:
    """The bundle's input: the crop of the real scene, normalised as the bundle says."""
    from models.bundle import load_bundle
    from pipeline.core.box import Box
    from pipeline.execution.preprocess import Preprocessor
    from pipeline.formats.source import SceneSource, kind_of

    path, crop = CASES[name]
    bundle = load_bundle(ROOT / "bundles" / name)
    src = SceneSource(kind_of(str(path)), (str(path),))
    sc = src.open()
    box = Box(tuple(s.start for s in crop), tuple(s.stop for s in crop))
    x = Preprocessor.from_bundle(bundle, sc)(sc.read(box))
    sc.close()
    return x


def one(name: str, who: str, onnx: str, runs: int, threads: int, out: str) -> None:
    import torch

    torch.set_num_threads(threads)
    from models.bundle import load_bundle
    from models.bundle.sources import open_model
    from pipeline import infer_array

    bundle = load_bundle(ROOT / "bundles" / name)
    model = open_model(onnx).build() if who == "onnx" else bundle.build()
    x = scene(name)
    kw = {"patch_size": bundle.config.patch_size, "overlap": bundle.config.overlap, "batch_size": 4}
    times = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        scores = infer_array(x, model, **kw)
        times.append(time.perf_counter() - t)
    np.save(out, scores)
    print(json.dumps({"median_s": statistics.median(times[1:])}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", nargs=4, metavar=("BUNDLE", "WHO", "ONNX", "OUT"))
    args = ap.parse_args()
    if args.one:
        name, who, onnx, out = args.one
        one(name, who, onnx, args.runs, args.threads, out)
        return
    from models.bundle import load_bundle
    from models.bundle.onnx import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        for name in CASES:
            onnx = export_onnx(load_bundle(ROOT / "bundles" / name), Path(tmp) / f"{name}.onnx")
            times: dict[str, list[float]] = {"torch": [], "onnx": []}
            for pair in range(args.pairs):
                order = ("torch", "onnx") if pair % 2 == 0 else ("onnx", "torch")
                for who in order:
                    cmd = [
                        sys.executable,
                        __file__,
                        "--runs",
                        str(args.runs),
                        "--threads",
                        str(args.threads),
                        "--one",
                        name,
                        who,
                        str(onnx),
                        str(Path(tmp) / f"{who}.npy"),
                    ]
                    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
                    times[who].append(json.loads(done.stdout.strip().splitlines()[-1])["median_s"])
            diff = float(np.abs(np.load(Path(tmp) / "onnx.npy") - np.load(Path(tmp) / "torch.npy")).max())
            t, o = statistics.median(times["torch"]), statistics.median(times["onnx"])
            print(
                json.dumps(
                    {
                        "bundle": name,
                        "torch_s": round(t, 3),
                        "onnx_s": round(o, 3),
                        "onnx_over_torch": round(o / t, 3),
                        "max_abs_diff": diff,
                        "torch_all": times["torch"],
                        "onnx_all": times["onnx"],
                    }
                )
            )


if __name__ == "__main__":
    main()
