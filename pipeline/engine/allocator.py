"""glibc malloc settings for a process that runs the engine.

The engine allocates and frees the same large buffers over and over: window batches, model
activations, block accumulators. By default glibc hands freed memory straight back to the kernel
(large chunks are ``mmap``-ed, and the heap top is trimmed past 128 KiB), so every block pays again
for page faults on fresh memory. On the 2-core VMs we measured, that was a quarter of the run time of a
3-D U-Net block (~40k minor faults per 160³ scene). Keeping freed memory in the process removes the
faults; peak RSS does not grow, it only stops dropping between blocks.

Kept memory is handed back as blocks retire (``release_free_memory``): across blocks, fragmentation
would otherwise let RSS creep up with the number of blocks (measured: +300 MB over a 16384² job). A
trim is not free: the pages it returns are mostly the model's activations, which the next batch
faults in again. So it waits until ``TRIM_EVERY_BYTES`` of block buffers were let go: once per block
at the default block sizes, once per many blocks when they are small (2048² in 512² blocks ran 1.37x
slower trimming after each one). Waiting for more than one default block raised a Dask worker's peak
by ~55 MB.

``TILEWISE_MALLOC=default`` leaves glibc's settings alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's ceiling: anything larger is still mmap-ed and returned
TRIM_THRESHOLD_BYTES = 256 * 2**20  # free heap kept for the next block before trimming
TRIM_EVERY_BYTES = 64 * 2**20  # block buffers let go between two trims: one default-sized block


_libc: ctypes.CDLL | None = None
_tuned: bool | None = None
_tune_lock = threading.Lock()


def ensure_malloc_tuned() -> bool:
    """``tune_malloc`` once per process, when the engine first runs (never at import: importing a
    module must not change the process)."""
    global _tuned
    with _tune_lock:
        if _tuned is None:
            _tuned = tune_malloc()
        return _tuned


def tune_malloc() -> bool:
    """Apply the settings; False where there is nothing to tune (not glibc) or they were declined."""
    if os.environ.get("TILEWISE_MALLOC", "").lower() == "default":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    global _libc
    with contextlib.suppress(AttributeError):
        # Two arenas: blocks read in the prefetch thread and freed in the main one otherwise fragment
        # per-thread arenas, and RSS creeps up with the number of blocks (16384² peak 1.22x the
        # 4096² one with the default arenas, 1.05x with two).
        ok = libc.mallopt(M_ARENA_MAX, 2)
        ok &= libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        ok &= libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        _libc = libc if ok else None
        return bool(ok)
    return False


_let_go = 0
_let_go_lock = threading.Lock()


def release_free_memory(let_go_bytes: int) -> bool:
    """Count a retired block's buffers; past ``TRIM_EVERY_BYTES`` since the last trim, return the free
    pages ``tune_malloc`` keeps to the kernel (a few ms). True when a trim was due."""
    global _let_go
    with _let_go_lock:
        _let_go += let_go_bytes
        due = _let_go >= TRIM_EVERY_BYTES
        if due:
            _let_go = 0
    if due and _libc is not None:
        _libc.malloc_trim(0)
    return due
