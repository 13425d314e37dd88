"""Reading the next block while the current one computes, without holding more than the stream needs."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from pipeline.core.tiling import Block
from pipeline.engine.allocator import ensure_malloc_tuned
from pipeline.engine.runner import BlockInput


class Prefetch:
    """Blocks read in a background thread while the current one computes, at most two in memory.

    The next block is read once at most one block is live (handed out and not yet ``retired``): the
    block just finished is let go (its accumulator, its seam pieces written) before the next read
    allocates, so a stream of blocks peaks no higher than two. If the consumer asks for a block that
    was not read ahead, it is read on demand: with CPU lanes, that happens while the block before
    still has its last batch in a lane, so such a stream holds three block inputs (and still one
    accumulator). A single block is read inline: a thread would only add its start-up and join to
    the run.
    """

    def __init__(self, items: Iterable[Block], read: Callable[[Block], BlockInput]) -> None:
        ensure_malloc_tuned()  # before the first block is read: freed buffers are kept for the next one
        self._items, self._read = iter(items), read
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: Future[BlockInput] | None = None
        self._live = 0

    def retired(self) -> None:
        """The consumer is done with one block (``BlockRunner`` calls this as each block retires)."""
        self._live -= 1
        self._read_ahead()

    def _read_ahead(self) -> None:
        if self._pool is None or self._ahead is not None or self._live > 1:
            return
        block = next(self._items, None)
        if block is not None:
            self._ahead = self._pool.submit(self._read, block)

    def __iter__(self) -> Iterator[BlockInput]:
        first = next(self._items, None)
        if first is None:
            return
        second = next(self._items, None)
        if second is None:
            self._live += 1
            yield self._read(first)
            return
        self._items = itertools.chain((second,), self._items)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tilewise-prefetch") as pool:
            self._pool, self._ahead = pool, pool.submit(self._read, first)
            try:
                while self._ahead is not None:
                    future, self._ahead = self._ahead, None
                    block_input = future.result()
                    self._live += 1
                    self._read_ahead()
                    yield block_input
                    if self._ahead is None:  # nothing retired since: read the next one now
                        block = next(self._items, None)
                        if block is not None:
                            self._ahead = pool.submit(self._read, block)
            finally:
                self._pool = None
