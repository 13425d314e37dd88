"""Issue-18 figures: finalisation (labels COG with overviews, probability COG, polygons) from a finished
work store, before (rows streamed through this process into a staging GTiff, GDAL building the MODE
overviews in one pass) and after (GDAL reading the work store's Zarr itself; MODE levels built tile by
tile on every core, probability AVERAGE levels too; polygon strips on worker processes).

    .venv/bin/python benchmarks/bench_finalise.py [--edges 8192 16384] [--pairs 2] [--probabilities]
        [--polygons]

A third side, ``gdal``, is the floor the issue names: GDAL alone writing the same labels as a COG with
MODE overviews from memory. Each side runs in its own fresh process, the order alternating per pair;
the work store is made once per edge under benchmarks/out/ (not committed) from the real Landsat
RGB.byte.tif (classes by brightness, the scene's nodata border kept as nodata).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RGB, ROOT

OUT = ROOT / "benchmarks" / "out"
CHUNK = 2048  # the job's default block write region at these sizes
TILE_VERSION = 2
CLASSES = ["dark", "mid", "bright", "brightest"]
COLORS = [(30, 30, 30), (60, 160, 60), (200, 200, 80), (250, 250, 250)]


def _tile() -> tuple[np.ndarray, np.ndarray]:
    """A 2048² mirrored (seamless) label tile and matching probabilities from the real scene (bump
    ``TILE_VERSION`` when this changes: stores are reused)."""
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(RGB) as src:
        base = src.read(out_shape=(src.count, 1024, 1024), resampling=Resampling.nearest).astype(np.float32)
    from scipy import ndimage

    grey = ndimage.gaussian_filter(base.mean(axis=0), 3)  # a model's labels are smoother than pixels
    valid = (base > 0).any(axis=0)
    cuts = np.percentile(grey[valid], [25, 50, 75])
    labels = np.digitize(grey, cuts).astype(np.uint8)
    labels[~valid] = 255
    probs = np.stack([np.clip(255 - np.abs(grey - c) * 3, 0, 255) for c in (*cuts, 255)]).astype(np.uint8)
    labels = np.concatenate([labels, labels[:, ::-1]], axis=1)
    labels = np.concatenate([labels, labels[::-1]], axis=0)
    probs = np.concatenate([probs, probs[:, :, ::-1]], axis=2)
    probs = np.concatenate([probs, probs[:, ::-1]], axis=1)
    return labels, probs


def make_store(edge: int, probabilities: bool) -> Path:
    """``labels.zarr`` (and ``probs.zarr``) as a finished job leaves them, in the work store's format."""
    from pipeline.execution.workstore import gdal_zarr

    root = OUT / f"finalise-{edge}"
    done = root / f"done-v{TILE_VERSION}{'-probs' if probabilities else ''}"
    if done.exists():
        return root
    labels_tile, probs_tile = _tile()
    root.mkdir(parents=True, exist_ok=True)
    labels = gdal_zarr((edge, edge), (CHUNK, CHUNK), root / "labels.zarr")
    probs = gdal_zarr((4, edge, edge), (4, CHUNK, CHUNK), root / "probs.zarr") if probabilities else None
    for r0 in range(0, edge, CHUNK):
        for c0 in range(0, edge, CHUNK):  # CHUNK is the tile's edge: one chunk, one tile
            labels[r0 : r0 + CHUNK, c0 : c0 + CHUNK] = labels_tile
            if probs is not None:
                probs[:, r0 : r0 + CHUNK, c0 : c0 + CHUNK] = probs_tile
    done.touch()
    return root


def finalise(root: Path, side: str, probabilities: bool, polygons: bool) -> dict[str, float]:
    """One side's finalisation, timed per output (what ``write_outputs`` does for a geo scene)."""
    import zarr
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    from pipeline.execution.mappers import ProcessMap
    from pipeline.execution.pyramid import build_label_pyramid, halves_exactly, level_sources
    from pipeline.execution.workstore import gdal_name
    from pipeline.formats.cog import write_cog_labels, write_cog_probabilities
    from pipeline.formats.scene import GeoMeta
    from pipeline.formats.vector import write_polygons

    meta = GeoMeta(crs=CRS.from_epsg(32618), transform=from_origin(500000, 4500000, 10, 10))
    labels = zarr.open_array(store=str(root / "labels.zarr"), mode="r")
    out = root / f"out-{side}"
    out.mkdir(exist_ok=True)
    times: dict[str, float] = {}
    if side == "gdal":
        return _gdal_alone(np.asarray(labels[...]), meta, out)
    t = time.perf_counter()
    sources: dict[str, object] = {}
    if side == "after":
        sources["gdal_source"] = gdal_name(labels)
        if halves_exactly(labels.shape):
            sources["overview_sources"] = level_sources(build_label_pyramid(labels, root / "overviews", 255))
    times["overviews"] = time.perf_counter() - t
    t = time.perf_counter()
    kw = {"meta": meta, "class_names": CLASSES, "overwrite": True}
    write_cog_labels(labels, out / "labels.tif", class_colors=COLORS, **sources, **kw)
    times["labels"] = time.perf_counter() - t
    if probabilities:
        probs = zarr.open_array(store=str(root / "probs.zarr"), mode="r")
        t = time.perf_counter()
        psources: dict[str, object] = {}
        if side == "after":
            psources["gdal_source"] = gdal_name(probs)
            if halves_exactly(labels.shape):
                levels = build_label_pyramid(probs, root / "overviews-probs", None)
                psources["overview_sources"] = level_sources(levels)
        write_cog_probabilities(probs, out / "probs.tif", **psources, **kw)
        times["probabilities"] = time.perf_counter() - t
    if polygons:
        pool = ProcessMap() if side == "after" else None
        t = time.perf_counter()
        try:
            write_polygons(labels, out / "polygons.gpkg", class_colors=COLORS, mapper=pool, **kw)
        finally:
            if pool is not None:
                pool.close()
        times["polygons"] = time.perf_counter() - t
    times["total"] = sum(times.values())
    times["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times["children_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return times


def _gdal_alone(labels: np.ndarray, meta: object, out: Path) -> dict[str, float]:
    """The floor the issue names: GDAL alone writing the same labels as a COG with MODE overviews
    (same options as ``write_cog_labels``), from an uncompressed in-memory GTiff (filling it untimed)."""
    import rasterio
    import rasterio.shutil

    from pipeline.formats.cog import COPY_THREADS

    h, w = labels.shape
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 1, "dtype": "uint8", "nodata": 255}
    profile.update(tiled=True, blockxsize=512, blockysize=512, crs=meta.crs, transform=meta.transform)  # type: ignore[attr-defined]
    with rasterio.open("/vsimem/labels.tif", "w", **profile) as dst:
        dst.write(labels, 1)
    options = {"BLOCKSIZE": 512, "COMPRESS": "DEFLATE", "PREDICTOR": 2, "OVERVIEW_RESAMPLING": "MODE"}
    t = time.perf_counter()
    with rasterio.Env(GDAL_NUM_THREADS=COPY_THREADS):
        rasterio.shutil.copy(
            "/vsimem/labels.tif", out / "labels.tif", driver="COG", NUM_THREADS=COPY_THREADS, **options
        )
    seconds = time.perf_counter() - t
    rasterio.shutil.delete("/vsimem/labels.tif")
    return {
        "labels": seconds,
        "total": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edges", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--probabilities", action="store_true")
    parser.add_argument("--polygons", action="store_true")
    parser.add_argument("--side", choices=["before", "after", "gdal"])  # internal: one side, this process
    parser.add_argument("--root")
    args = parser.parse_args()
    if args.side:
        print(json.dumps(finalise(Path(args.root), args.side, args.probabilities, args.polygons)))
        return
    flags = [f for f, on in (("--probabilities", args.probabilities), ("--polygons", args.polygons)) if on]
    for edge in args.edges:
        root = make_store(edge, args.probabilities)
        runs: dict[str, list[dict[str, float]]] = {"before": [], "after": [], "gdal": []}
        for pair in range(args.pairs):
            for side in ("before", "after", "gdal") if pair % 2 == 0 else ("gdal", "after", "before"):
                cmd = [sys.executable, __file__, "--side", side, "--root", str(root), *flags]
                done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
                runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
        for side, rows in runs.items():
            med = {k: round(statistics.median(r.get(k, 0.0) for r in rows), 2) for k in rows[0]}
            print(json.dumps({"edge": edge, "side": side, "runs": len(rows), **med}))
        before = statistics.median(r["total"] for r in runs["before"])
        after = statistics.median(r["total"] for r in runs["after"])
        labels_after = statistics.median(r["overviews"] + r["labels"] for r in runs["after"])
        floor = statistics.median(r["labels"] for r in runs["gdal"])
        print(
            json.dumps(
                {
                    "edge": edge,
                    "speed_up": round(before / after, 2),
                    "labels_vs_gdal_alone": round(labels_after / floor, 2),
                }
            )
        )


if __name__ == "__main__":
    main()
