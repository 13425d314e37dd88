"""The labels' overview levels, built tile by tile into the work store, many tiles at once.

GDAL used to build the COG's MODE overviews in the job process, in one serial pass after the blocks.
Here each level is cut into fixed tiles (``TILE_EDGE``, independent of the block size, so any block
size and worker count give the same zarr); a tile reads the windows it needs from the level below
(``pipeline.formats.overviews``) and is the only writer of its own chunk, so the tiles of one level
run in parallel and levels follow one another. Levels are Zarr v2 arrays (zstd), which GDAL reads
directly, so the COG is then assembled from them without a staging copy (``cog.write_cog_labels``
with ``overview_sources=``). Used when every level halves exactly (``halves_exactly``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import zarr

from pipeline.execution.mappers import Mapper, thread_map
from pipeline.execution.workstore import gdal_zarr
from pipeline.formats.overviews import average_tile, level_shapes, mode_tile, source_span

TILE_EDGE = 1024  # destination pixels per tile edge: a few MB of windows per task


def _tiles(shape: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    return [
        (y0, min(shape[0], y0 + TILE_EDGE), x0, min(shape[1], x0 + TILE_EDGE))
        for y0 in range(0, shape[0], TILE_EDGE)
        for x0 in range(0, shape[1], TILE_EDGE)
    ]


def build_tile(src_path: str, dst_path: str, box: tuple[int, int, int, int], *, nodata: int | None) -> None:
    """One tile of a level from the level below it (both paths to Zarr arrays); picklable for Dask.
    A 2-D array is labels (MODE), a 3-D one ``(K, y, x)`` probabilities (AVERAGE, exact halvings only)."""
    src = zarr.open_array(store=src_path, mode="r")
    dst = zarr.open_array(store=dst_path, mode="r+")
    y0, y1, x0, x1 = box
    if src.ndim == 3:
        dst[:, y0:y1, x0:x1] = average_tile(np.asarray(src[:, 2 * y0 : 2 * y1, 2 * x0 : 2 * x1]))
        return
    src_shape, dst_shape = tuple(src.shape), tuple(dst.shape)
    ya, yb = source_span(src_shape[0], dst_shape[0], y0, y1)
    xa, xb = source_span(src_shape[1], dst_shape[1], x0, x1)
    window = np.asarray(src[ya:yb, xa:xb])
    dst[y0:y1, x0:x1] = mode_tile(window, (ya, xa), src_shape, dst_shape, box, nodata)  # type: ignore[arg-type]


def build_label_pyramid(
    labels: zarr.Array, folder: Path, nodata: int | None, mapper: Mapper | None = None
) -> list[Path]:
    """Write every overview level of ``labels`` (a GDAL-readable Zarr array, ``(y, x)`` labels or
    ``(K, y, x)`` probabilities) under ``folder``; returns the levels' paths, largest first.
    ``mapper`` runs one level's tiles (a thread pool by default; ``DaskExecutor.map`` on workers)."""
    run = mapper or thread_map()
    folder.mkdir(parents=True, exist_ok=True)
    src = str(labels.store.root)  # type: ignore[attr-defined]
    lead = tuple(labels.shape[:-2])
    paths: list[Path] = []
    for k, shape in enumerate(level_shapes(tuple(labels.shape[-2:]))):  # type: ignore[arg-type]
        path = folder / f"level{k + 1}.zarr"
        gdal_zarr((*lead, *shape), (*(1 for _ in lead), TILE_EDGE, TILE_EDGE), path)  # a chunk per band
        dst = str(path)
        list(run(partial(build_tile, src, dst, nodata=nodata), _tiles(shape)))
        paths.append(path)
        src = dst
    return paths


def level_sources(paths: Sequence[Path]) -> list[str]:
    return [f'ZARR:"{p}"' for p in paths]


def halves_exactly(shape: tuple[int, int]) -> bool:
    """True when every overview level is exactly half the one before on both axes. Only then is a
    tile-wise build certain to equal GDAL's: with an odd size a window is 3 pixels wide now and then,
    and GDAL cuts such a window where its own processing chunks end (measured on GDAL 3.10), which
    depends on GDAL's chunking, not on the data."""
    prev = shape
    for level in level_shapes(shape):
        if prev[0] != 2 * level[0] or prev[1] != 2 * level[1]:
            return False
        prev = level
    return True
