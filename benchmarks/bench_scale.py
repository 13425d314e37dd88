"""Issue-18 figures at scale, with the 1x1 TorchScript model (the model costs nothing; the rest shows).

    .venv/bin/python benchmarks/bench_scale.py bound   [--edge 32768] [--pairs 2]
        the whole `tilewise run` (file in, COG out, every stage) against its lower bound: the time to
        decode the input once plus the time GDAL alone takes to write the same labels as a COG with
        overviews (same creation options as pipeline/formats/cog.py, from a tiled staging GTiff).
        Target: tilewise <= 1.3x the bound, peak RSS <= 1.5 GB.
    .venv/bin/python benchmarks/bench_scale.py workers [--edge 32768] [--pairs 2]
        `tilewise run --workers 1` against `--workers 2` (Dask worker processes), finalise included.
        Target: 2 workers >= 1.7x faster. Each run's ``cores`` (its CPU over its wall) bounds what a
        machine can show: on 2 cores, 2 workers can be at most 2 / cores(1 worker) times faster.
    .venv/bin/python benchmarks/bench_scale.py mosaic  [--tiles 6] [--tile-edge 16384]
        a TILES x TILES virtual mosaic (a VRT whose sources are one real scene, repeated: it costs no
        disk) of about 10 Gpx: peak RSS and seconds per Gpx, against the `bound` run's figure.
        Target: flat memory, time per Gpx within 10 % of the 32768² run.

Every side runs in its own fresh process and the sides alternate; the load average is printed with
each row, since on a shared machine only a quiet run's figures mean anything. Scenes and bundles go
under benchmarks/out/ (not committed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, child_usage, make_conv1x1_bundle, make_scene

OUT = ROOT / "benchmarks" / "out"


def _run(scene: Path, out: Path, *extra: str) -> dict:
    """One `tilewise run` in a fresh process: wall, CPU (all its processes), peak RSS, the report's
    stage timings. ``cores`` (CPU / wall) says how much of the machine the run kept busy."""
    shutil.rmtree(out, ignore_errors=True)
    bundle = make_conv1x1_bundle(OUT / "bundle-conv1x1")
    cmd = [sys.executable, "-m", "flows.cli", "run", str(scene), str(out), "-m", str(bundle), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)  # a plain one-off run
    t = time.perf_counter()
    peak, cpu, _ = child_usage(cmd, cwd=str(ROOT), env=env)
    wall = time.perf_counter() - t
    (report,) = out.rglob("*_report.json")
    timings = json.loads(report.read_text())["timings_s"]
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "cores": round(cpu / wall, 2),
            "peak_rss_mb": round(peak), "blocks_s": timings.get("blocks_s"),
            "outputs_s": timings.get("outputs_s")}  # fmt: skip


def _child(*args: str) -> dict:
    """This script's own subcommand in a fresh process (one side of a comparison)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def decode_once(scene: str) -> None:
    """Read every tile of the input once (GDAL decodes each exactly once, row of tiles by row)."""
    import rasterio
    from rasterio.windows import Window

    t = time.perf_counter()
    with rasterio.open(scene) as src:
        step = src.block_shapes[0][0]
        for row in range(0, src.height, step):
            src.read(window=Window(0, row, src.width, min(step, src.height - row)))
    print(json.dumps({"seconds": time.perf_counter() - t}))


def gdal_cog(labels: str, stage: str, dest: str) -> None:
    """GDAL alone writing ``labels`` as a COG with overviews, with tilewise's creation options, from a
    tiled staging GTiff made first (not timed), as pipeline/formats/cog.py stages its rows."""
    import rasterio
    import rasterio.shutil

    from pipeline.formats.cog import COPY_THREADS

    if not Path(stage).exists():
        rasterio.shutil.copy(labels, stage, driver="GTiff", TILED="YES", BLOCKXSIZE=512, BLOCKYSIZE=512,
                             COMPRESS="ZSTD", ZSTD_LEVEL=1, BIGTIFF="IF_SAFER")  # fmt: skip
    Path(dest).unlink(missing_ok=True)
    t = time.perf_counter()
    options = {"BLOCKSIZE": 512, "COMPRESS": "DEFLATE", "PREDICTOR": 2, "OVERVIEW_RESAMPLING": "MODE",
               "BIGTIFF": "IF_SAFER", "NUM_THREADS": COPY_THREADS}  # fmt: skip
    rasterio.shutil.copy(stage, dest, driver="COG", **options)
    print(json.dumps({"seconds": time.perf_counter() - t}))


def bound(edge: int, pairs: int) -> dict:
    scene = make_scene(OUT / f"scene-{edge}.tif", edge)
    out = OUT / f"scale-bound-{edge}"
    labels = OUT / f"scale-labels-{edge}.tif"
    result: dict = {}
    for i in range(pairs):
        row: dict = {"edge": edge, "load": round(os.getloadavg()[0], 1)}
        for side in ("tilewise", "bound") if i % 2 == 0 else ("bound", "tilewise"):
            if side == "tilewise" or not labels.exists():
                row["tilewise"] = _run(scene, out)
                (made,) = out.rglob("*_labels.tif")
                shutil.copy(made, labels)
                shutil.rmtree(out, ignore_errors=True)
            if side == "bound":
                row["decode_s"] = round(_child("decode-once", str(scene))["seconds"], 1)
                stage, dest = OUT / f"scale-stage-{edge}.tif", OUT / f"scale-gdal-{edge}.tif"
                row["gdal_cog_s"] = round(
                    _child("gdal-cog", str(labels), str(stage), str(dest))["seconds"], 1
                )
        row["ratio"] = round(row["tilewise"]["wall_s"] / (row["decode_s"] + row["gdal_cog_s"]), 2)
        print(json.dumps(row), flush=True)
        result = row
    return result


def workers(edge: int, pairs: int) -> None:
    scene = make_scene(OUT / f"scene-{edge}.tif", edge)
    for i in range(pairs):
        row: dict = {"edge": edge, "load": round(os.getloadavg()[0], 1)}
        for n in (1, 2) if i % 2 == 0 else (2, 1):
            row[f"workers_{n}"] = _run(scene, OUT / f"scale-workers-{n}", "--workers", str(n))
        row["speed_up"] = round(row["workers_1"]["wall_s"] / row["workers_2"]["wall_s"], 2)
        print(json.dumps(row), flush=True)


def write_mosaic(tile: Path, tiles: int, dest: Path) -> Path:
    """A VRT of ``tiles``² copies of one scene side by side, covering the one scene's extent."""
    import rasterio

    with rasterio.open(tile) as src:
        w, h, count, t = src.width, src.height, src.count, src.transform
        crs, dtype, (bh, bw) = src.crs.to_wkt(), src.dtypes[0], src.block_shapes[0]
    gdal_type = {"uint8": "Byte", "uint16": "UInt16"}[dtype]
    bands = []
    for b in range(1, count + 1):
        sources = "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="0">{tile}</SourceFilename>'
            f'<SourceBand>{b}</SourceBand><SourceProperties RasterXSize="{w}" RasterYSize="{h}" '
            f'DataType="{gdal_type}" BlockXSize="{bw}" BlockYSize="{bh}"/>'
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
            f'<DstRect xOff="{c * w}" yOff="{r * h}" xSize="{w}" ySize="{h}"/></SimpleSource>'
            for r in range(tiles)
            for c in range(tiles)
        )
        bands.append(f'<VRTRasterBand dataType="{gdal_type}" band="{b}">{sources}</VRTRasterBand>')
    # pixels shrunk so the mosaic covers the tile's own extent: a synthetic scene of 300 m pixels repeated
    # tiles x tiles times would span ~30,000 km, which no projection can take to WGS84 for the STAC item
    geo = f"{t.c}, {t.a / tiles}, {t.b}, {t.f}, {t.d}, {t.e / tiles}"
    dest.write_text(
        f'<VRTDataset rasterXSize="{w * tiles}" rasterYSize="{h * tiles}"><SRS>{crs}</SRS>'
        f"<GeoTransform>{geo}</GeoTransform>{''.join(bands)}</VRTDataset>"
    )
    return dest


def mosaic(tiles: int, tile_edge: int, ref_edge: int) -> None:
    tile = make_scene(OUT / f"scene-{tile_edge}.tif", tile_edge)
    vrt = write_mosaic(tile, tiles, OUT / f"mosaic-{tiles}x{tile_edge}.vrt")
    gpx = (tiles * tile_edge) ** 2 / 1e9
    ref = _run(make_scene(OUT / f"scene-{ref_edge}.tif", ref_edge), OUT / "scale-mosaic-ref")
    big = _run(vrt, OUT / "scale-mosaic")
    per_gpx, ref_per_gpx = big["wall_s"] / gpx, ref["wall_s"] / (ref_edge**2 / 1e9)
    print(json.dumps({"gpx": round(gpx, 2), "load": round(os.getloadavg()[0], 1), "mosaic": big, "ref": ref,
                      "s_per_gpx": round(per_gpx, 1), "ref_s_per_gpx": round(ref_per_gpx, 1),
                      "ratio": round(per_gpx / ref_per_gpx, 3)}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("bound", "workers"):
        p = sub.add_parser(name)
        p.add_argument("--edge", type=int, default=32768)
        p.add_argument("--pairs", type=int, default=2)
    m = sub.add_parser("mosaic")
    m.add_argument("--tiles", type=int, default=6)
    m.add_argument("--tile-edge", type=int, default=16384)
    m.add_argument("--ref-edge", type=int, default=32768)
    d = sub.add_parser("decode-once")
    d.add_argument("scene")
    g = sub.add_parser("gdal-cog")
    g.add_argument("labels")
    g.add_argument("stage")
    g.add_argument("dest")
    args = parser.parse_args()
    if args.cmd == "bound":
        bound(args.edge, args.pairs)
    elif args.cmd == "workers":
        workers(args.edge, args.pairs)
    elif args.cmd == "mosaic":
        mosaic(args.tiles, args.tile_edge, args.ref_edge)
    elif args.cmd == "decode-once":
        decode_once(args.scene)
    else:
        gdal_cog(args.labels, args.stage, args.dest)


if __name__ == "__main__":
    main()
