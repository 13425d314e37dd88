"""Issue-18 figures with the 1x1 TorchScript model (the model costs nothing; everything else shows).

    .venv/bin/python benchmarks/bench_feed.py engine  [--edge 8192] [--pairs 3]
        tilewise run (file in, COG out, every stage, one fresh process) against MONAI
        sliding_window_inference over the same pixels already in memory (argmax included, no I/O),
        in alternating fresh processes: Mpx/s and peak RSS of each side.
    .venv/bin/python benchmarks/bench_feed.py finalise [--edge 8192] [--base DIR] [--cachemax MB]
        the same tilewise run of this checkout and of another checkout (DIR, e.g. the merge base made
        with ``git archive``), alternating: the report's blocks/outputs split. A small GDAL_CACHEMAX
        stands in for a scene whose tile rows outgrow the cache (the 32768² case of the issue).
Scenes and bundles go under benchmarks/out/ (not committed). The machine's load is printed with each
figure: on a shared machine, compare medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, child_peak_rss_mb, make_conv1x1_bundle, make_scene

OUT = ROOT / "benchmarks" / "out"


def _tilewise(root: Path, scene: Path, out: Path, bundle: Path, env: dict[str, str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "flows.cli", "run", str(scene), str(out), "-m", str(bundle)]
    t = time.perf_counter()
    peak, _ = child_peak_rss_mb(cmd, cwd=str(root), env={**env, "PYTHONPATH": str(root)})
    wall = time.perf_counter() - t
    (report,) = out.glob("*_report.json")
    timings = json.loads(report.read_text())["timings_s"]
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(peak), "timings_s": timings}


def monai_one(scene: str) -> None:
    """One MONAI side, in its own process: read the scene into memory (not timed), then time
    sliding_window_inference + argmax over it with the same model, patch, overlap and blend."""
    import numpy as np
    import rasterio
    import torch
    from monai.inferers import sliding_window_inference

    from models.bundle import load_bundle

    torch.set_num_threads(os.cpu_count() or 1)
    bundle = load_bundle(OUT / "bundle-conv1x1")
    net = bundle.build()
    with rasterio.open(scene) as src:
        x = torch.from_numpy(src.read().astype(np.float32) / 255.0)[None]
    t = time.perf_counter()
    with torch.inference_mode():
        scores = sliding_window_inference(
            x, (256, 256), 4, lambda b: torch.softmax(net(b), 1), overlap=0.25, mode="gaussian"
        )
        labels = scores.argmax(1).to(torch.uint8)
    took = time.perf_counter() - t
    print(json.dumps({"seconds": took, "pixels": int(labels.numel())}))


def engine(edge: int, pairs: int) -> None:
    scene = make_scene(OUT / f"scene-{edge}.tif", edge)
    bundle = make_conv1x1_bundle(OUT / "bundle-conv1x1")
    rows = []
    for i in range(pairs):
        row: dict = {"load": os.getloadavg()[0]}
        for who in ("tilewise", "monai") if i % 2 == 0 else ("monai", "tilewise"):
            if who == "tilewise":
                got = _tilewise(ROOT, scene, OUT / "feed-engine", bundle, dict(os.environ))
                row["tilewise_s"], row["tilewise_rss_mb"] = got["wall_s"], got["peak_rss_mb"]
            else:
                cmd = [sys.executable, str(Path(__file__)), "monai-one", str(scene)]
                peak, done = child_peak_rss_mb(
                    cmd, cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)}
                )
                row["monai_s"] = round(json.loads(done.stdout.strip().splitlines()[-1])["seconds"], 2)
                row["monai_rss_mb"] = round(peak)
        rows.append(row)
        print(json.dumps(row), flush=True)
    mpx = edge * edge / 1e6
    t_med = statistics.median(r["tilewise_s"] for r in rows)
    m_med = statistics.median(r["monai_s"] for r in rows)
    print(
        json.dumps(
            {
                "edge": edge,
                "tilewise_mpx_s": round(mpx / t_med, 2),
                "monai_mpx_s": round(mpx / m_med, 2),
                "ratio": round(m_med / t_med, 3),
                "tilewise_rss_mb": statistics.median(r["tilewise_rss_mb"] for r in rows),
                "monai_rss_mb": statistics.median(r["monai_rss_mb"] for r in rows),
            }
        )
    )


def finalise(edge: int, base: Path, cachemax: int, pairs: int) -> None:
    scene = make_scene(OUT / f"scene-{edge}.tif", edge)
    bundle = make_conv1x1_bundle(OUT / "bundle-conv1x1")
    env = {**os.environ, "GDAL_CACHEMAX": str(cachemax)}
    rows = []
    for i in range(pairs):
        row: dict = {"load": os.getloadavg()[0]}
        for who in ("this", "base") if i % 2 == 0 else ("base", "this"):
            root = ROOT if who == "this" else base
            got = _tilewise(root, scene, OUT / f"feed-final-{who}", bundle, env)
            t = got["timings_s"]
            keep = ("blocks_s", "outputs_s", "quicklook_s")
            row[who] = {"wall_s": got["wall_s"], "rss_mb": got["peak_rss_mb"], **{k: t.get(k) for k in keep}}
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("engine")
    e.add_argument("--edge", type=int, default=8192)
    e.add_argument("--pairs", type=int, default=3)
    f = sub.add_parser("finalise")
    f.add_argument("--edge", type=int, default=8192)
    f.add_argument("--base", type=Path, required=True)
    f.add_argument("--cachemax", type=int, default=8)
    f.add_argument("--pairs", type=int, default=2)
    m = sub.add_parser("monai-one")
    m.add_argument("scene")
    args = parser.parse_args()
    if args.cmd == "engine":
        engine(args.edge, args.pairs)
    elif args.cmd == "finalise":
        finalise(args.edge, args.base, args.cachemax, args.pairs)
    else:
        monai_one(args.scene)
