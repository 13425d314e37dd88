"""CPU compute lanes: batches of windows run side by side, each on one intra-op thread.

A U-Net forward on CPU is a chain of ops that are each too small to keep several threads busy: an
instance norm over a 256² window, a PReLU, a concatenation, convolutions with 16 channels. Split over
the two cores of our workers, every op pays a fork/join and leaves one core waiting at each barrier.
Two batches run at once, one thread each, keep both cores busy instead. Big batches are the
opposite case: their ops split well over threads, and two of them at once only double the
activations. So lanes run only batches of at most ``MAX_LANE_VOXELS`` (``lanes_for``). Measured on 2
cores, each side in its own process, MONAI's U-Net, whole ``infer_array`` runs: 2-D 256² windows in
batches of 4 (262k pixels) 0.90x the time of one batch at a time on two threads; 3-D 96³ windows in
batches of 4 (3.5M voxels) 1.29x, hence the limit.

Each lane runs its batch on exactly one thread, whatever the lane count, so the arithmetic (and the
bytes) are those of a one-thread Dask worker, on a laptop or a 16-core box. Results are taken back in
the order the batches went in, so the blend adds windows in the same order as before.

OpenMP's thread count is per thread: ``torch.set_num_threads(1)`` inside a lane only narrows that
lane. It also sets the default that threads created later start from, which is put back at once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_pools: dict[int, ThreadPoolExecutor] = {}
_lock = threading.Lock()
_fork_hook = False


def _forget_pools_in_child() -> None:
    """A forked child has none of the parent's threads: a pool inherited from it would never run."""
    global _lock
    _pools.clear()
    _lock = threading.Lock()


MAX_LANE_VOXELS = 2**19  # pixels or voxels in one batch of windows


def lanes_for(available: int, batch_voxels: int) -> int:
    """Lanes for a run whose batches hold ``batch_voxels``: all of them for small batches, else one.

    A rule on the batch's shape, never a timing, so every process picks the same.
    """
    return available if batch_voxels <= MAX_LANE_VOXELS else 1


def cpu_lanes(requested: int | None = None) -> int:
    """How many batches to run at once on CPU: ``requested``, else torch's thread count."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"lanes must be at least 1, got {requested}")
        return requested
    import torch  # here, not at import: the plan reads ``lanes_for`` without loading torch

    return max(1, torch.get_num_threads())


def _one_thread() -> None:
    import torch

    torch.get_num_threads()  # torch sets a thread's count lazily, on first use: do that now, not later
    torch.set_num_threads(1)


def _pool(count: int) -> ThreadPoolExecutor:
    """A process-wide pool per lane count, started once: its threads keep their one-thread setting."""
    global _fork_hook
    with _lock:
        if not _fork_hook:  # registered with the first pool, not at import: importing changes nothing
            os.register_at_fork(after_in_child=_forget_pools_in_child)
            _fork_hook = True
        pool = _pools.get(count)
        if pool is None:
            import torch

            default = torch.get_num_threads()
            pool = ThreadPoolExecutor(count, thread_name_prefix="tilewise-lane", initializer=_one_thread)
            everyone = threading.Barrier(count)  # one task per thread: every initialiser has run
            for future in [pool.submit(everyone.wait) for _ in range(count)]:
                future.result()
            torch.set_num_threads(default)  # the lanes' initialiser changed the default of new threads
            _pools[count] = pool
        return pool


class Lanes:
    """Runs calls on ``count`` one-thread lanes; ``count == 1`` runs them inline on the caller's threads."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._pool = _pool(count) if count > 1 else None

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        if self._pool is not None:
            return self._pool.submit(fn, *args)
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to whoever takes the result, as the pool would
            future.set_exception(exc)
        return future


class CallerThreads:
    """The caller's own torch work (blending) runs on one thread while lanes compute.

    That work overlaps the lanes, so more threads would only take cores from them: with the caller's
    OpenMP team spinning between its ops, a 2-D run with two lanes took 1.2x MONAI's time instead of
    0.91x. Once nothing is in flight (the last block's division, say) the caller gets its threads
    back.
    """

    def __init__(self) -> None:
        self._wide: int | None = None

    def narrow(self) -> None:
        import torch

        if self._wide is None:
            self._wide = torch.get_num_threads()
            torch.set_num_threads(1)

    def widen(self) -> None:
        import torch

        if self._wide is not None:
            torch.set_num_threads(self._wide)
            self._wide = None
