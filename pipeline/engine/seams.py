"""The seam merge: a computed block finalises its interior at once and hands on the partial sums of
its seam bands; a block's seam band is finalised once every block that reaches into it is computed.

Only the block itself and its lower neighbours reach into its seam band (the block edge is at least
the window), so in a row-major sweep a block can merge as soon as it is computed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from pipeline.core.blending import Accumulator, HalfAccumulator, SeamPiece, loaded, replay
from pipeline.core.sinks import Sink
from pipeline.core.tiling import Block, BlockPlan
from pipeline.engine.runner import BlockInput


class SeamStore(Protocol):
    """Holds the partial sums one block hands to the merge, keyed by block index."""

    def put(self, index: tuple[int, ...], pieces: list[SeamPiece]) -> None: ...

    def get(self, index: tuple[int, ...]) -> list[SeamPiece]: ...

    def drop(self, index: tuple[int, ...]) -> None: ...


class MemorySeams:
    """Seam store for the single-process sweep: in memory up to a budget, then spilled to a temp folder.

    A row-major sweep keeps the partial sums of about one row of blocks, which grows with the scene's
    width; past ``budget_bytes`` they go to disk (page cache, not RSS), so memory stays flat.
    """

    def __init__(self, budget_bytes: int = 64 * 2**20) -> None:
        self.budget_bytes = budget_bytes
        self._pieces: dict[tuple[int, ...], list[SeamPiece]] = {}
        self._spilled: dict[tuple[int, ...], list[tuple[Any, ...]]] = {}  # (box, path, rank?)
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.nbytes = 0

    def put(self, index: tuple[int, ...], pieces: list[SeamPiece]) -> None:
        size = sum(p[1].nbytes for p in pieces)
        if self.nbytes + size <= self.budget_bytes:
            self._pieces[index] = pieces
            self.nbytes += size
            return
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="tilewise-seams-")
        stored = []
        for i, (box, sums, *rank) in enumerate(pieces):
            path = os.path.join(self._dir.name, f"{'_'.join(map(str, index))}-{i}.npy")
            np.save(path, sums)
            stored.append((box, path, *rank))
        self._spilled[index] = stored

    def get(self, index: tuple[int, ...]) -> list[SeamPiece]:
        if index in self._spilled:
            return [(box, np.load(path), *rank) for box, path, *rank in self._spilled[index]]  # type: ignore[misc]
        return self._pieces.get(index, [])

    def drop(self, index: tuple[int, ...]) -> None:
        pieces = self._pieces.pop(index, None)
        if pieces is not None:
            self.nbytes -= sum(p[1].nbytes for p in pieces)
        for _, path, *_rank in self._spilled.pop(index, []):
            os.unlink(path)

    def close(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def finish_block(
    plan: BlockPlan, block_input: BlockInput, acc: Accumulator | None, channels: int, sink: Sink
) -> list[SeamPiece]:
    """A computed block: write the interior to ``sink``; return the partial sums of the rest.

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
    if isinstance(acc, HalfAccumulator):  # each window's share, for the merge to replay in nnU-Net's order
        pieces = acc.seam_pieces()
        if not block.interior.empty:
            sink.write(block.interior, *acc.view(block.interior))
        return pieces
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
    pieces: Callable[[tuple[int, ...]], list[SeamPiece]],
    ordered: tuple[np.ndarray, tuple[int, ...]] | None = None,
) -> None:
    """The seam merge: finalise a block's seam band from the partial sums of its contributors.

    ``ordered``: the importance map and the network's axis order, for nnU-Net's float16 sums."""
    contributions = [piece for c in plan.contributors(block.index) for piece in pieces(c)]
    if contributions and len(contributions[0]) == 3:  # nnU-Net's float16 sums: replayed in its order
        if ordered is None:
            raise ValueError("float16 seam shares need the importance map and the axis order to replay")
        for band in block.seam:
            sink.write(band, *replay(band, channels, contributions, *ordered))  # type: ignore[arg-type]
        return
    for band in block.seam:
        sums = np.zeros((channels + 1, *band.shape), dtype=np.float32)
        for box, partial in contributions:
            overlap = box.intersect(band)
            if not overlap.empty:
                sums[(slice(None), *overlap.slices(band.start))] += loaded(partial)[
                    (slice(None), *overlap.slices(box.start))
                ]
        sink.write(band, sums[:-1], sums[-1])


class SweepMerger:
    """Merges each block's seams as soon as its contributors are computed (sweep order),
    and frees partial sums once every block that needs them has merged."""

    def __init__(
        self,
        plan: BlockPlan,
        sink: Sink,
        seams: SeamStore,
        ordered: tuple[np.ndarray, tuple[int, ...]] | None = None,
    ) -> None:
        self.plan, self.sink, self.seams, self.ordered = plan, sink, seams, ordered
        self.remaining: dict[tuple[int, ...], int] = {}
        self.peak_seam_bytes = 0

    def __call__(self, block_input: BlockInput, acc: Accumulator | None, channels: int) -> None:
        block = block_input.block
        self.seams.put(block.index, finish_block(self.plan, block_input, acc, channels, self.sink))
        if isinstance(self.seams, MemorySeams):
            self.peak_seam_bytes = max(self.peak_seam_bytes, self.seams.nbytes)  # in memory, not spilled
        merge_seams(self.plan, block, channels, self.sink, self.seams.get, self.ordered)
        for c in self.plan.contributors(block.index):
            left = self.remaining.get(c, len(self.plan.consumers(c))) - 1
            self.remaining[c] = left
            if left == 0:
                self.seams.drop(c)
