"""Ways to run many small, independent output tasks (overview tiles, polygon strips) side by side.

A mapper is ``mapper(fn, items) -> results in item order``. On Dask the executor's own ``map`` sends
them to the workers (``DaskExecutor.map``); here are the two for a job in one process.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

Mapper = Callable[[Callable[[Any], Any], Iterable[Any]], Iterable[Any]]


def thread_map(workers: int | None = None) -> Mapper:
    """On this machine's cores in threads: for numpy work that releases the GIL (overview tiles)."""
    n = workers or os.cpu_count() or 1

    def run(fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(fn, items))

    return run


class ProcessMap:
    """On this machine's cores in fresh (spawned) processes, for work that holds the GIL (GDAL's
    polygonize, scipy's labelling). The pool starts on first use and lives until ``close``; spawned,
    not forked, because the job process runs threads (torch, GDAL) a fork would copy mid-lock. At most
    ``MAX_PROCESSES`` by default: each holds a strip and its int32 component labels (~150 MB at 16 Mpx)."""

    MAX_PROCESSES = 4

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or min(self.MAX_PROCESSES, os.cpu_count() or 1)
        self._pool: ProcessPoolExecutor | None = None

    def __call__(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        items = list(items)
        if self.workers < 2 or len(items) < 2:
            return [fn(i) for i in items]
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx)
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
