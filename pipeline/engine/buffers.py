"""Batch buffers that are used again instead of allocated afresh for every batch.

Each batch needs its model input ``(B, C, *roi)`` and its activation's output ``(B, K, *roi)``: with
256² windows in batches of 4, 3 and 4 MB per batch. Allocated per batch, glibc kept giving those
pages back (``malloc_trim`` as blocks retire, the lanes' arena heaps unmapped as they empty), so the
next batch faulted them in again: ~500k minor faults in an 8192² run with a 1x1 model, a fifth of its
CPU time spent in the kernel. Buffers kept here stay mapped, so their pages are faulted in once.

A buffer is handed out as a view of a flat array the pool keeps, and goes back to the pool by itself
once nothing refers to it: every numpy view of it, and every tensor made from one with
``torch.from_numpy``, holds a reference to that flat array, so its reference count says when the last
user is gone. Whoever keeps a result (a test, a caller of ``Predictor``) therefore keeps its memory:
nothing still referenced is ever written again. When every kept buffer is in use, a fresh, unkept
array is handed out.

The pools live as long as one ``BlockRunner.run``, which hands its pool for results to the predictor
through ``batch_results`` (a context variable, so that a predictor wrapped by stage timers still
finds it); a ``Predictor`` called on its own allocates its results as before. Buffers larger than
glibc's mmap threshold (``MAX_KEPT_BYTES``) are not kept: a 3-D network's batch can be 100 MB, and
holding it idle while a block is finalised would raise the peak; its model dwarfs the faults anyway.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from collections.abc import Iterator
from contextvars import ContextVar

import numpy as np

from pipeline.engine.allocator import MMAP_THRESHOLD_BYTES

MAX_KEPT_BYTES = MMAP_THRESHOLD_BYTES


def _refs(items: list[np.ndarray], i: int) -> int:
    return sys.getrefcount(items[i])


_IDLE = _refs([np.empty(0, np.uint8)], 0)  # the count of a flat array nothing else refers to


class BufferPool:
    """Up to ``keep`` reusable buffers of any shape and dtype (thread-safe)."""

    def __init__(self, keep: int) -> None:
        self.keep = max(1, int(keep))
        self._flats: list[np.ndarray] = []  # uint8, each viewed as whatever ``take`` is asked for
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: np.dtype | type = np.float32) -> np.ndarray:
        """An uninitialised C-contiguous array: a kept buffer nothing refers to, else a fresh one."""
        dtype = np.dtype(dtype)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > MAX_KEPT_BYTES:
            return np.empty(shape, dtype)
        with self._lock:
            free = [i for i in range(len(self._flats)) if _refs(self._flats, i) == _IDLE]
            fits = [i for i in free if self._flats[i].nbytes >= nbytes]
            if fits:
                pick = fits[0]
            elif free:  # a kept buffer too small for this batch: grow it
                pick = free[0]
                self._flats[pick] = np.empty(nbytes, np.uint8)
            elif len(self._flats) < self.keep:
                pick = len(self._flats)
                self._flats.append(np.empty(nbytes, np.uint8))
            else:  # all in use: one that is not kept
                return np.empty(shape, dtype)
            return self._flats[pick][:nbytes].view(dtype).reshape(shape)

    @property
    def nbytes(self) -> int:
        """Bytes the pool keeps."""
        with self._lock:
            return sum(flat.nbytes for flat in self._flats)


_results: ContextVar[BufferPool | None] = ContextVar("tilewise_batch_results", default=None)


@contextlib.contextmanager
def batch_results(pool: BufferPool | None) -> Iterator[None]:
    """Within this block, ``Predictor`` writes its activated outputs into buffers of ``pool``."""
    token = _results.set(pool)
    try:
        yield
    finally:
        _results.reset(token)


def results_pool() -> BufferPool | None:
    """The pool ``batch_results`` set for this thread, if any."""
    return _results.get()
