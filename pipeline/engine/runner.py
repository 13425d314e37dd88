"""The compute pass: stream a block's windows through the model and blend them into its accumulator.

``BlockRunner`` computes every window a block owns, exactly once, batching windows across block
boundaries so the model stays busy, and hands each finished block on (``pipeline.engine.seams``
finalises its interior and keeps the partial sums of its seam bands). Because every pixel's value is
``sum(w * p) / sum(w)`` over the same windows whatever the cut, the result does not depend on the
block size or on which worker ran what.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

from pipeline.core.blending import Accumulator, HalfAccumulator
from pipeline.core.box import Box
from pipeline.core.tile_order import leading_spill
from pipeline.core.tiling import Block, BlockPlan
from pipeline.engine.allocator import ensure_malloc_tuned, release_free_memory
from pipeline.engine.buffers import BufferPool, batch_results
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
    prepare: Callable[..., np.ndarray] | None = None
    mask: np.ndarray | None = None  # (*read.shape) bool, for ``prepare``: where a masked norm applies
    prepare_into: bool = False  # ``prepare`` takes ``out=`` and writes the batch slot itself

    def patch(self, window: Box, out: np.ndarray | None = None) -> np.ndarray:
        """The model input over ``window`` (a view when ``image`` is already the model input), or
        written into ``out`` (a batch slot) and returned."""
        where = window.slices(self.block.read.start)
        raw = self.image[(slice(None), *where)]
        if self.prepare is None:
            if out is None:
                return raw
            np.copyto(out, raw, casting="unsafe")
            return out
        nodata = None if self.nodata is None else self.nodata[where]
        if nodata is not None and not nodata.any():
            nodata = None  # a wholly valid window: nothing to zero after normalising
        args = (raw, nodata) if self.mask is None else (raw, nodata, self.mask[where])
        if out is None:
            return self.prepare(*args)
        if self.prepare_into:
            return self.prepare(*args, out=out)
        out[...] = self.prepare(*args)
        return out


def window_is_empty(window: Box, block_input: BlockInput) -> bool:
    """True when every pixel of the window inside the scene is nodata (the window is skipped)."""
    if block_input.nodata is None:
        return False
    view = block_input.nodata[window.slices(block_input.block.read.start)]
    # one valid pixel decides it: most windows of a scene with holes hold data at their centre, so
    # look there before reading every pixel of the mask (numpy's ``all`` does not stop early)
    if not view[tuple(n // 2 for n in view.shape)]:
        return False
    return bool(view.all())


@dataclass
class _Open:
    block_input: BlockInput
    acc: Accumulator | None
    pending: int = 0
    sealed: bool = False


_Batch = list[tuple[_Open, Box]]


def assemble(batch: _Batch, pool: BufferPool | None = None) -> np.ndarray:
    """The batch's model input ``(B, C, *roi)``: each window normalised straight into its slot (of a
    buffer from ``pool``, used again once the model is done with it: :mod:`pipeline.engine.buffers`).

    Runs in the lane that runs the batch, so normalising (elementwise, the same values wherever it
    runs) is spread over the lanes instead of queueing on the thread that blends.
    """
    inputs = [entry.block_input for entry, _ in batch]
    f32 = np.dtype(np.float32)
    kinds = {bi.image.dtype if bi.prepare is None else f32 if bi.prepare_into else None for bi in inputs}
    if len(kinds) == 1 and None not in kinds:
        (dtype,) = kinds
        roi = batch[0][1].shape
        shape = (len(batch), inputs[0].image.shape[0], *roi)
        out = np.empty(shape, dtype) if pool is None else pool.take(shape, dtype)
        for slot, (entry, window) in zip(out, batch, strict=True):
            entry.block_input.patch(window, slot)
        return out
    # a prepare function of unknown output: as it returns them; torch.stack copies on all threads
    return torch.stack([torch.from_numpy(entry.block_input.patch(window)) for entry, window in batch]).numpy()


@dataclass
class BlockRunner:
    """The compute pass over a stream of blocks, in order. Calls ``on_done(block, acc)`` as each completes.

    When ``predict`` has ``lanes > 1`` (a CPU :class:`~pipeline.engine.predictor.Predictor`) and the batches
    are small, that many batches run at once (:mod:`pipeline.engine.lanes`) while the next one is gathered;
    their results are blended in the order the batches went in, so the sums are the same as one
    batch at a time.

    ``on_done`` must copy what it keeps of the accumulator: its memory is zeroed and reused by the
    next block (except in a one-block plan, where a sink may adopt the sums as its result).
    """

    plan: BlockPlan
    predict: Callable[[np.ndarray], np.ndarray]
    weights: np.ndarray
    batch_size: int = 4
    on_done: Callable[[BlockInput, Accumulator | None, int], None] = lambda b, a, k: None
    channels: int | None = None  # K, learnt from the first prediction when not given
    # nnU-Net's float16 sums (HalfAccumulator): the scene axes in the network's order, by which a
    # block's windows are added (nnU-Net's tile order); None: float32 sums in the block's own order
    order: tuple[int, ...] | None = None
    windows_run: int = 0
    windows_skipped: int = 0
    blend_s: float = 0.0
    _weights: torch.Tensor = field(init=False)
    _open: deque[_Open] = field(default_factory=deque)
    _batch: _Batch = field(default_factory=list)
    _in_flight: deque[tuple[_Batch, Future[np.ndarray]]] = field(default_factory=deque)
    _lanes: Lanes = field(init=False)
    _caller: CallerThreads = field(default_factory=CallerThreads)
    _notify: Callable[[], None] | None = field(default=None, init=False)
    _narrow: bool = field(default=True, init=False)
    _spare: torch.Tensor | None = field(default=None, init=False)  # a retired block's accumulator memory
    _inputs: BufferPool | None = field(default=None, init=False)  # batch inputs, used again
    _results: BufferPool | None = field(default=None, init=False)  # the predictor's activated outputs

    def __post_init__(self) -> None:
        ensure_malloc_tuned()  # before the first block: freed buffers are kept for the next one
        self._weights = torch.from_numpy(np.array(self.weights))  # one writable copy shared by every block

    def run(self, inputs: Iterable[BlockInput]) -> None:
        self._notify = getattr(inputs, "retired", None)  # lets a prefetch read once a block is let go
        available = int(getattr(self.predict, "lanes", 1))
        streams = int(getattr(self.predict, "streams", 0) or 0)  # CUDA: a batch in flight per stream
        self._narrow = not streams  # the caller's CPU threads blend for the GPU: keep them all
        self._lanes = Lanes(streams or lanes_for(available, self.batch_size * int(np.prod(self.plan.roi))))
        # batch buffers used again for this run (pipeline.engine.buffers): inputs, a batch per lane
        # and one being assembled; results, also one queued and one being blended
        self._inputs = BufferPool(self._lanes.count + 1)
        self._results = BufferPool(self._lanes.count + 2)
        self._spare = None  # never carried from one run to the next (a sink may have kept the sums)
        try:
            self._run(inputs)
        finally:
            self._spare = self._inputs = self._results = None
            for _, future in self._in_flight:  # after an error: queued batches never start
                future.cancel()
            self._in_flight.clear()
            self._caller.widen()

    def _run(self, inputs: Iterable[BlockInput]) -> None:
        for block_input in inputs:
            entry = _Open(block_input, None)
            self._open.append(entry)
            indices = self.plan.block_windows(block_input.block)
            if self.order is not None:
                order = self.order
                indices = iter(sorted(indices, key=lambda i: tuple(i[a] for a in order)))
            for index in indices:
                window = self.plan.window(index)
                if window_is_empty(window, block_input):
                    self.windows_skipped += 1
                    continue
                entry.pending += 1
                self._batch.append((entry, window))
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
        if self._lanes.count > 1 and self._narrow:
            self._caller.narrow()
        self._in_flight.append((batch, self._lanes.submit(self._predict_batch, batch)))
        # queued before waiting, so a lane that frees up starts it at once; inline, taken back at once
        depth = self._lanes.count if self._lanes.count > 1 else 0
        while len(self._in_flight) > depth:
            self._collect()

    def _predict_batch(self, batch: _Batch) -> np.ndarray:
        with batch_results(self._results):
            return self.predict(assemble(batch, self._inputs))

    def _collect(self) -> None:
        """Blend the oldest batch in flight (batches are blended in the order they went in)."""
        batch, future = self._in_flight.popleft()
        predictions = future.result()
        if not self._in_flight:
            self._caller.widen()
        self.windows_run += len(batch)
        if self.channels is None:
            self.channels = int(predictions.shape[1])
        for (entry, window), prediction in zip(batch, predictions, strict=True):
            if entry.acc is None:
                # a batch that spans two blocks: retire the finished one before the next block's
                # accumulator exists, so two are never held at once
                self._retire()
                spare, self._spare = self._spare, None
                entry.acc = self._accumulator(entry.block_input.block, spare)
            start = time.perf_counter()
            entry.acc.add(window, prediction)
            self.blend_s += time.perf_counter() - start  # the weighted sums, for the stage timings
            entry.pending -= 1

    def _accumulator(self, block: Block, spare: torch.Tensor | None) -> Accumulator:
        assert self.channels is not None
        if self.order is None:
            return Accumulator(block.read, self.channels, self._weights, spare)
        lead, spill = leading_spill(self.plan, block, self.order)
        return HalfAccumulator(block.read, self.channels, self._weights, spill, self.order, lead)

    def _retire(self) -> None:
        # Blocks retire in order, and only once K is known (a block may have skipped all its windows).
        while self.channels is not None and self._open and self._open[0].sealed and not self._open[0].pending:
            entry = self._open.popleft()
            self.on_done(entry.block_input, entry.acc, self.channels)
            # the accumulator counts as let go even when its memory is kept for the next block: the
            # trims then come once per default-sized block, as they did, and bound fragmentation as before
            let_go = entry.block_input.image.nbytes + (entry.acc.nbytes if entry.acc is not None else 0)
            # ``on_done`` copies what it keeps, except a sink given the whole scene as one block, which
            # adopts the sums as its result (ScoreSink); with one block there is no next block anyway
            if entry.acc is not None and math.prod(self.plan.grid_shape) > 1:  # float32 sums only
                self._spare = getattr(entry.acc, "storage", None)  # the next block's sums reuse its pages
            entry.acc = None  # the batch being flushed may still hold the entry; not its sums
            del entry
            release_free_memory(let_go)  # bounds fragmentation creep with the number of blocks
            if self._notify is not None:
                self._notify()
