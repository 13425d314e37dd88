"""I/O off the model's path: a block's read split over threads, and its results written behind.

The block pass already reads the next block in a background thread (``pipeline.engine.prefetch``)
while the model runs. That hides the read only while it is shorter than the compute. When the input
is the bottleneck (deflate tiles to decode, a remote object store), one reading thread is the
job's speed whatever the model does. ``StripReader`` reads the block read ahead in horizontal strips
on a few threads, each with its own handle on the file (a GDAL dataset is not thread-safe), and
strips cut on the file's tile rows so no tile is decoded twice. Memory is unchanged: the same one
block ahead, read faster. Only exact windowed readers take part (GDAL rasters on their own grid),
so the pixels are the same bytes as one read.

``WriteBehind`` takes a finished block's writes (its phase-1 file, the merges it makes ready, their
label chunks) off the compute thread onto one writer thread, at most one block behind, so the model
never waits on compression or the disk and memory stays bounded.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from pipeline.core.box import Box

MIN_STRIP_ROWS = 256  # below this a strip's thread costs more than it saves


def read_threads() -> int:
    """Threads reading one block: ``TILEWISE_READ_THREADS``, else half the cores (the model, the blend
    and the writes need the rest; on 2 cores one thread: benchmarks/bench_overlap.py measured two
    0.8x as fast there), at most 4, and at most 2 in a process given a thread budget
    (``OMP_NUM_THREADS``: a Dask worker among many)."""
    value = os.environ.get("TILEWISE_READ_THREADS", "").strip()
    if value.isdigit():
        return max(1, int(value))
    cap = 2 if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit() else 4
    return max(1, min(cap, (os.cpu_count() or 1) // 2))


def strip_rows(box: Box, tile_rows: int, threads: int) -> list[tuple[int, int]]:
    """Row ranges (absolute) cutting ``box`` into about ``threads`` strips on tile-row boundaries."""
    r0, r1 = box.start[0], box.stop[0]
    want = max(MIN_STRIP_ROWS, math.ceil((r1 - r0) / threads))
    step = max(tile_rows, math.ceil(want / tile_rows) * tile_rows)
    cuts = [r0, *range((r0 // step + 1) * step, r1, step), r1]
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


class StripReader:
    """A GDAL scene whose ``read_with_nodata`` runs on ``threads`` threads (see the module docstring);
    everything else is the wrapped scene's."""

    def __init__(self, scene: Any, threads: int) -> None:
        self.scene, self.threads = scene, threads
        self._tile_rows = int(scene.dataset.block_shapes[0][0])  # the file's tile (or strip) height
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tilewise-read")
        self._handles = [type(scene)(scene.uri, bands=scene.bands) for _ in range(threads)]  # one each
        self._free = list(self._handles)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.scene, name)

    def _read(self, box: Box) -> tuple[np.ndarray, np.ndarray | None]:
        handle = self._free.pop()  # list.pop/append are atomic: each strip has a handle to itself
        try:
            out: tuple[np.ndarray, np.ndarray | None] = handle.read_with_nodata(box)
            return out
        finally:
            self._free.append(handle)

    def read_with_nodata(self, box: Box, fill: float = 0.0) -> tuple[np.ndarray, np.ndarray | None]:
        strips = strip_rows(box, self._tile_rows, self.threads)
        if len(strips) < 2 or fill != 0.0:
            return self.scene.read_with_nodata(box, fill)
        boxes = [Box((a, *box.start[1:]), (b, *box.stop[1:])) for a, b in strips]
        parts = list(self._pool.map(self._read, boxes))
        data = np.concatenate([p[0] for p in parts], axis=1)
        masks = [p[1] for p in parts]
        return data, None if masks[0] is None else np.concatenate(masks, axis=0)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for handle in self._handles:
            handle.close()


def parallel_reads(scene: Any, threads: int | None = None) -> StripReader | None:
    """A ``StripReader`` over ``scene`` when it is a GDAL raster read on its own grid and more than one
    thread is allowed; else None (the scene is read as it is)."""
    from pipeline.formats.geotiff import GeoTiffScene

    count = read_threads() if threads is None else threads
    if count < 2 or type(scene) is not GeoTiffScene:
        return None
    return StripReader(scene, count)


class WriteBehind:
    """Runs writes on one background thread, in order, at most one waiting: ``submit`` blocks until
    the write before the last has finished, and ``close`` waits for all and re-raises a failure."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="tilewise-write")
        self._last: Future[None] | None = None

    def submit(self, write: Callable[[], None]) -> None:
        last, self._last = self._last, None
        if last is not None:
            last.result()  # back-pressure, and a failed write stops the block pass here (once)
        self._last = self._pool.submit(write)

    def close(self) -> None:
        last, self._last = self._last, None
        try:
            if last is not None:
                last.result()
        finally:
            self._pool.shutdown(wait=True)
