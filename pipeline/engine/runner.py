"""Block execution: stream windows through the model, blend them, finalise interiors, merge seams.

Phase 1 (``BlockRunner``) computes every window a block owns, exactly once, batching windows across
block boundaries so the model stays busy. It finalises the block's interior at once and hands the
partial weighted sums of the rest of its footprint to a seam store. Phase 2 (``merge_seams``) adds up
the partial sums a block's seam band received from itself and its lower neighbours, and finalises it.
Because every pixel's value is ``sum(w * p) / sum(w)`` over the same windows whatever the cut, the
result does not depend on the block size or on which worker ran what.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from pipeline.core.blending import Accumulator
from pipeline.core.box import Box
from pipeline.core.tiling import Block, BlockPlan
from pipeline.engine.allocator import ensure_malloc_tuned, release_free_memory
from pipeline.engine.lanes import CallerThreads, Lanes, lanes_for


@dataclass
class BlockInput:
    """A block's pixels over its read region, and where there is no data.

    With ``prepare``, ``image`` holds the raw pixels and each window is normalised as it is batched:
    a block in flight then costs its source dtype, not float32 (two are in flight: the one computing
    and the one read ahead).
    """

    block: Block
    image: np.ndarray  # (C, *read.shape): model input, or raw pixels for ``prepare``
    nodata: np.ndarray | None = None  # (*read.shape) bool, True = no data
    prepare: Callable[[np.ndarray, np.ndarray | None], np.ndarray] | None = None

    def patch(self, window: Box) -> np.ndarray:
        """The model input over ``window`` (a view when ``image`` is already the model input)."""
        where = window.slices(self.block.read.start)
        if self.prepare is None:
            return self.image[(slice(None), *where)]
        nodata = None if self.nodata is None else self.nodata[where]
        return self.prepare(self.image[(slice(None), *where)], nodata)


class Sink(Protocol):
    """Finalises regions from their complete weighted sums ``(K, *box.shape)`` and weight
    ``(*box.shape)``. Each region lies inside one block's write region. The sink divides (or takes
    the argmax) itself, so it can write straight into its destination; it may overwrite ``sums``."""

    def write(self, box: Box, sums: np.ndarray, weight: np.ndarray) -> None: ...


class SeamStore(Protocol):
    """Holds the partial sums one block hands to the merge, keyed by block index."""

    def put(self, index: tuple[int, ...], pieces: list[tuple[Box, np.ndarray]]) -> None: ...

    def get(self, index: tuple[int, ...]) -> list[tuple[Box, np.ndarray]]: ...

    def drop(self, index: tuple[int, ...]) -> None: ...


class MemorySeams:
    """Seam store for the single-process sweep: in memory up to a budget, then spilled to a temp folder.

    A row-major sweep keeps the partial sums of about one row of blocks, which grows with the scene's
    width; past ``budget_bytes`` they go to disk (page cache, not RSS), so memory stays flat.
    """

    def __init__(self, budget_bytes: int = 64 * 2**20) -> None:
        self.budget_bytes = budget_bytes
        self._pieces: dict[tuple[int, ...], list[tuple[Box, np.ndarray]]] = {}
        self._spilled: dict[tuple[int, ...], list[tuple[Box, str]]] = {}
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.nbytes = 0

    def put(self, index: tuple[int, ...], pieces: list[tuple[Box, np.ndarray]]) -> None:
        size = sum(a.nbytes for _, a in pieces)
        if self.nbytes + size <= self.budget_bytes:
            self._pieces[index] = pieces
            self.nbytes += size
            return
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="tilewise-seams-")
        stored = []
        for i, (box, sums) in enumerate(pieces):
            path = os.path.join(self._dir.name, f"{'_'.join(map(str, index))}-{i}.npy")
            np.save(path, sums)
            stored.append((box, path))
        self._spilled[index] = stored

    def get(self, index: tuple[int, ...]) -> list[tuple[Box, np.ndarray]]:
        if index in self._spilled:
            return [(box, np.load(path)) for box, path in self._spilled[index]]
        return self._pieces.get(index, [])

    def drop(self, index: tuple[int, ...]) -> None:
        pieces = self._pieces.pop(index, None)
        if pieces is not None:
            self.nbytes -= sum(a.nbytes for _, a in pieces)
        for _, path in self._spilled.pop(index, []):
            os.unlink(path)

    def close(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def window_is_empty(window: Box, block_input: BlockInput) -> bool:
    """True when every pixel of the window inside the scene is nodata (the window is skipped)."""
    if block_input.nodata is None:
        return False
    view = block_input.nodata[window.slices(block_input.block.read.start)]
    return bool(view.all())


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


@dataclass
class _Open:
    block_input: BlockInput
    acc: Accumulator | None
    pending: int = 0
    sealed: bool = False


_Batch = list[tuple[_Open, Box, np.ndarray]]


@dataclass
class BlockRunner:
    """Phase 1 over a stream of blocks, in order. Calls ``on_done(block, acc)`` as each completes.

    When ``predict`` has ``lanes > 1`` (a CPU :class:`~pipeline.engine.predictor.Predictor`) and the batches
    are small, that many batches run at once (:mod:`pipeline.engine.lanes`) while the next one is gathered;
    their results are blended in the order the batches went in, so the sums are the same as one
    batch at a time.
    """

    plan: BlockPlan
    predict: Callable[[np.ndarray], np.ndarray]
    weights: np.ndarray
    batch_size: int = 4
    on_done: Callable[[BlockInput, Accumulator | None, int], None] = lambda b, a, k: None
    channels: int | None = None  # K, learnt from the first prediction when not given
    windows_run: int = 0
    windows_skipped: int = 0
    _weights: torch.Tensor = field(init=False)
    _open: deque[_Open] = field(default_factory=deque)
    _batch: _Batch = field(default_factory=list)
    _in_flight: deque[tuple[_Batch, Future[np.ndarray]]] = field(default_factory=deque)
    _lanes: Lanes = field(init=False)
    _caller: CallerThreads = field(default_factory=CallerThreads)
    _notify: Callable[[], None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        ensure_malloc_tuned()  # before the first block: freed buffers are kept for the next one
        self._weights = torch.from_numpy(np.array(self.weights))  # one writable copy shared by every block

    def run(self, inputs: Iterable[BlockInput]) -> None:
        self._notify = getattr(inputs, "retired", None)  # lets a prefetch read once a block is let go
        available = int(getattr(self.predict, "lanes", 1))
        self._lanes = Lanes(lanes_for(available, self.batch_size * int(np.prod(self.plan.roi))))
        try:
            self._run(inputs)
        finally:
            for _, future in self._in_flight:  # after an error: queued batches never start
                future.cancel()
            self._in_flight.clear()
            self._caller.widen()

    def _run(self, inputs: Iterable[BlockInput]) -> None:
        for block_input in inputs:
            entry = _Open(block_input, None)
            self._open.append(entry)
            for index in self.plan.block_windows(block_input.block):
                window = self.plan.window(index)
                if window_is_empty(window, block_input):
                    self.windows_skipped += 1
                    continue
                entry.pending += 1
                self._batch.append((entry, window, block_input.patch(window)))
                if len(self._batch) >= self.batch_size:
                    self._flush()
            entry.sealed = True
            self._retire()
        self._flush()
        while self._in_flight:
            self._collect()
        self._retire()
        if self._open:
            raise ValueError("every window lies wholly in nodata: nothing to compute")

    def _flush(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        # torch.stack copies the strided patches on all threads (np.stack uses one)
        stacked = torch.stack([torch.from_numpy(patch) for _, _, patch in batch]).numpy()
        if self._lanes.count > 1:
            self._caller.narrow()
        self._in_flight.append((batch, self._lanes.submit(self.predict, stacked)))
        # queued before waiting, so a lane that frees up starts it at once; inline, taken back at once
        depth = self._lanes.count if self._lanes.count > 1 else 0
        while len(self._in_flight) > depth:
            self._collect()

    def _collect(self) -> None:
        """Blend the oldest batch in flight (batches are blended in the order they went in)."""
        batch, future = self._in_flight.popleft()
        predictions = future.result()
        if not self._in_flight:
            self._caller.widen()
        self.windows_run += len(batch)
        if self.channels is None:
            self.channels = int(predictions.shape[1])
        for (entry, window, _), prediction in zip(batch, predictions, strict=True):
            if entry.acc is None:
                # a batch that spans two blocks: retire the finished one before the next block's
                # accumulator exists, so two are never held at once
                self._retire()
                entry.acc = Accumulator(entry.block_input.block.read, self.channels, self._weights)
            entry.acc.add(window, prediction)
            entry.pending -= 1

    def _retire(self) -> None:
        # Blocks retire in order, and only once K is known (a block may have skipped all its windows).
        while self.channels is not None and self._open and self._open[0].sealed and not self._open[0].pending:
            entry = self._open.popleft()
            self.on_done(entry.block_input, entry.acc, self.channels)
            let_go = entry.block_input.image.nbytes + (entry.acc.nbytes if entry.acc is not None else 0)
            entry.acc = None  # the batch being flushed may still hold the entry; not its sums
            del entry
            release_free_memory(let_go)  # bounds fragmentation creep with the number of blocks
            if self._notify is not None:
                self._notify()


def finish_block(
    plan: BlockPlan, block_input: BlockInput, acc: Accumulator | None, channels: int, sink: Sink
) -> list[tuple[Box, np.ndarray]]:
    """Phase 1 output: write the interior to ``sink``; return the partial sums of the rest.

    Nodata pixels get zero weight, so they finalise as uncovered wherever their sums end up.
    """
    block = block_input.block
    if acc is None:  # every window was skipped: the interior is uncovered and nothing is handed over
        if not block.interior.empty:
            shape = block.interior.shape
            sink.write(block.interior, np.zeros((channels, *shape), np.float32), np.zeros(shape, np.float32))
        return []
    if block_input.nodata is not None:
        acc.clear(block_input.nodata)
    pieces = []
    for box in block.spill:  # copied before the sink may finalise the interior in place
        inside = box.intersect(plan.scene)
        if not inside.empty:
            pieces.append((inside, acc.take(inside)))
    if not block.interior.empty:
        sink.write(block.interior, *acc.view(block.interior))
    return pieces


def merge_seams(
    plan: BlockPlan,
    block: Block,
    channels: int,
    sink: Sink,
    pieces: Callable[[tuple[int, ...]], list[tuple[Box, np.ndarray]]],
) -> None:
    """Phase 2: finalise a block's seam band from the partial sums of its contributors."""
    contributions = [piece for c in plan.contributors(block.index) for piece in pieces(c)]
    for band in block.seam:
        sums = np.zeros((channels + 1, *band.shape), dtype=np.float32)
        for box, partial in contributions:
            overlap = box.intersect(band)
            if not overlap.empty:
                sums[(slice(None), *overlap.slices(band.start))] += partial[
                    (slice(None), *overlap.slices(box.start))
                ]
        sink.write(band, sums[:-1], sums[-1])


class SweepMerger:
    """Runs phase 2 of each block as soon as phase 1 of its contributors is done (sweep order),
    and frees partial sums once every block that needs them has merged."""

    def __init__(self, plan: BlockPlan, sink: Sink, seams: SeamStore) -> None:
        self.plan, self.sink, self.seams = plan, sink, seams
        self.remaining: dict[tuple[int, ...], int] = {}
        self.peak_seam_bytes = 0

    def __call__(self, block_input: BlockInput, acc: Accumulator | None, channels: int) -> None:
        block = block_input.block
        self.seams.put(block.index, finish_block(self.plan, block_input, acc, channels, self.sink))
        if isinstance(self.seams, MemorySeams):
            self.peak_seam_bytes = max(self.peak_seam_bytes, self.seams.nbytes)  # in memory, not spilled
        merge_seams(self.plan, block, channels, self.sink, self.seams.get)
        for c in self.plan.contributors(block.index):
            left = self.remaining.get(c, len(self.plan.consumers(c))) - 1
            self.remaining[c] = left
            if left == 0:
                self.seams.drop(c)
