"""Pure window and block maths: no I/O, no arrays.

The windows form one global grid over the scene, the same grid as MONAI's ``sliding_window_inference``
(interval ``int(roi * (1 - overlap))``, last window flush with the end, symmetric padding when the
scene is smaller than the window). ``grid="nnunet"`` spreads the starts evenly instead, as nnU-Net's
``compute_steps_for_sliding_window`` does (a window of one voxel steps by one: nnU-Net's 2-D models on
3-D volumes). Blocks partition that grid: each window is owned by exactly one
block, the one whose write region holds the window's start. Everything is separable per axis, so the
N-d answers are products of the 1-d ones computed here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

from pipeline.core.box import Box


def scan_interval(size: int, roi: int, overlap: float) -> int:
    """Step between window starts on one axis, exactly as MONAI computes it."""
    if roi == size:
        return roi
    interval = int(roi * (1 - overlap))
    return interval if interval > 0 else 1


GRIDS = ("monai", "nnunet")


def nnunet_starts(size: int, roi: int, step: float) -> tuple[int, ...]:
    """nnU-Net's starts: ``ceil((size - roi) / (roi * step)) + 1`` windows spread evenly, rounded."""
    if roi == 1:
        return tuple(range(size))
    count = math.ceil((size - roi) / (roi * step)) + 1
    actual = (size - roi) / (count - 1) if count > 1 else 0.0
    return tuple(round(actual * i) for i in range(count))  # round() is np.round's half-to-even


def axis_starts(size: int, roi: int, overlap: float, grid: str = "monai") -> tuple[int, ...]:
    """Window starts on one axis; negative only when the axis is shorter than the window."""
    if size < 1 or roi < 1:
        raise ValueError(f"axis size {size} and window {roi} must be positive")
    if size <= roi:
        return (-((roi - size) // 2),)  # MONAI's symmetric padding and nnU-Net's pad_nd_image agree
    if grid == "nnunet":
        return nnunet_starts(size, roi, 1.0 - overlap)
    if grid != "monai":
        raise ValueError(f"grid {grid!r} is not one of {', '.join(GRIDS)}")
    step = scan_interval(size, roi, overlap)
    count = next(d for d in range(math.ceil(size / step)) if d * step + roi >= size) + 1
    return tuple(i * step - max(i * step + roi - size, 0) for i in range(count))


def axis_blocks(size: int, block: int) -> tuple[tuple[int, int], ...]:
    """Write intervals of the blocks along one axis: ``[k*block, min((k+1)*block, size))``."""
    return tuple((a, min(a + block, size)) for a in range(0, size, block))


def axis_owners(starts: Sequence[int], size: int, block: int) -> tuple[int, ...]:
    """Block index owning each window: the block holding its start (negative starts go to block 0)."""
    last = len(axis_blocks(size, block)) - 1
    return tuple(min(max(s // block, 0), last) for s in starts)


@dataclass(frozen=True)
class AxisPlan:
    """Everything the block machinery needs along one axis."""

    size: int
    roi: int
    block: int
    starts: tuple[int, ...]

    @cached_property
    def owners(self) -> tuple[int, ...]:
        return axis_owners(self.starts, self.size, self.block)

    @cached_property
    def writes(self) -> tuple[tuple[int, int], ...]:
        return axis_blocks(self.size, self.block)

    def owned(self, k: int) -> tuple[int, int]:
        """Half-open range of window indices owned by block ``k``."""
        idx = [i for i, o in enumerate(self.owners) if o == k]
        return (idx[0], idx[-1] + 1) if idx else (0, 0)

    def footprint(self, k: int) -> tuple[int, int]:
        """Pixels touched by the windows block ``k`` owns (may leave the scene for padded axes)."""
        lo, hi = self.owned(k)
        if lo == hi:
            return (0, 0)
        return (self.starts[lo], self.starts[hi - 1] + self.roi)

    def interior(self, k: int) -> tuple[int, int]:
        """Pixels of block ``k``'s write region that no other block's window touches."""
        lo, hi = self.owned(k)
        a, b = self.writes[k]
        if lo == hi:
            return (a, a)
        before = [s + self.roi for s, o in zip(self.starts, self.owners, strict=True) if o < k]
        after = [s for s, o in zip(self.starts, self.owners, strict=True) if o > k]
        start = max([a, *before])
        stop = min([b, *after])
        return (start, max(start, stop))


def make_axis_plans(
    spatial_shape: Sequence[int],
    roi: Sequence[int],
    overlap: float | Sequence[float],
    block: Sequence[int],
    grid: str = "monai",
) -> tuple[AxisPlan, ...]:
    dims = len(spatial_shape)
    overlaps = tuple(overlap) if isinstance(overlap, Sequence) else (float(overlap),) * dims
    if not (len(roi) == len(block) == len(overlaps) == dims):
        raise ValueError(f"roi {roi}, block {block} and overlap must have {dims} entries")
    if not all(0.0 <= o < 1.0 for o in overlaps):  # a negative overlap would leave gaps between windows
        raise ValueError(f"overlap {overlap} must be in [0, 1)")
    for r, b in zip(roi, block, strict=True):
        if b < r:
            raise ValueError(f"block edge {b} is smaller than the window {r}; it must be at least the window")
    return tuple(
        AxisPlan(int(n), int(r), int(b), axis_starts(int(n), int(r), o, grid))
        for n, r, b, o in zip(spatial_shape, roi, block, overlaps, strict=True)
    )


@dataclass(frozen=True)
class Block:
    """One unit of work: the windows it computes, where it reads, and where it writes.

    ``read`` is the footprint of its windows; ``write`` its share of the output partition;
    ``interior`` the part of ``write`` it alone finalises. ``write - interior`` is its seam band,
    finalised by the merge from the partial sums of this block and its lower neighbours.
    """

    index: tuple[int, ...]
    windows: tuple[tuple[int, int], ...]  # per axis, half-open range into the axis starts
    read: Box
    write: Box
    interior: Box

    @property
    def window_count(self) -> int:
        return math.prod(b - a for a, b in self.windows)

    @property
    def seam(self) -> list[Box]:
        return list(self.write.difference(self.interior))

    @property
    def spill(self) -> list[Box]:
        """Parts of the footprint this block cannot finalise: partial sums handed to the merge."""
        return list(self.read.difference(self.interior))


@dataclass(frozen=True)
class BlockPlan:
    """The global window grid and its partition into blocks."""

    spatial_shape: tuple[int, ...]
    roi: tuple[int, ...]
    block_size: tuple[int, ...]
    axes: tuple[AxisPlan, ...]

    @classmethod
    def build(
        cls,
        spatial_shape: Sequence[int],
        roi: Sequence[int] | int,
        overlap: float | Sequence[float],
        block_size: Sequence[int] | int | None = None,
        grid: str = "monai",
    ) -> BlockPlan:
        dims = len(spatial_shape)
        rois = tuple(int(r) for r in (roi if isinstance(roi, Sequence) else (roi,) * dims))
        if len(rois) != dims:
            raise ValueError(f"window {rois} must have {dims} entries, one per scene axis")
        if block_size is None:
            blocks = tuple(max(n, r) for n, r in zip(spatial_shape, rois, strict=True))
        elif isinstance(block_size, Sequence):
            blocks = tuple(int(b) for b in block_size)
        else:
            blocks = (int(block_size),) * dims
        axes = make_axis_plans(spatial_shape, rois, overlap, blocks, grid)
        return cls(tuple(int(n) for n in spatial_shape), rois, blocks, axes)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """Blocks per axis."""
        return tuple(len(a.writes) for a in self.axes)

    @property
    def window_grid_shape(self) -> tuple[int, ...]:
        return tuple(len(a.starts) for a in self.axes)

    @property
    def window_count(self) -> int:
        return math.prod(self.window_grid_shape)

    @property
    def scene(self) -> Box:
        return Box.from_shape(self.spatial_shape)

    def window(self, index: Sequence[int]) -> Box:
        start = tuple(a.starts[i] for a, i in zip(self.axes, index, strict=True))
        return Box(start, tuple(s + r for s, r in zip(start, self.roi, strict=True)))

    def block(self, index: Sequence[int]) -> Block:
        per_axis = [
            (a.owned(k), a.footprint(k), a.writes[k], a.interior(k))
            for a, k in zip(self.axes, index, strict=True)
        ]
        return Block(
            index=tuple(int(k) for k in index),
            windows=tuple(p[0] for p in per_axis),
            read=_box([p[1] for p in per_axis]),
            write=_box([p[2] for p in per_axis]),
            interior=_box([p[3] for p in per_axis]),
        )

    def blocks(self) -> Iterator[Block]:
        """All blocks in sweep (lexicographic) order: every block's lower neighbours come first."""
        for index in itertools.product(*(range(n) for n in self.grid_shape)):
            yield self.block(index)

    def block_windows(self, block: Block) -> Iterator[tuple[int, ...]]:
        """Window indices a block owns, in lexicographic order."""
        yield from itertools.product(*(range(a, b) for a, b in block.windows))

    def contributors(self, index: Sequence[int]) -> list[tuple[int, ...]]:
        """Blocks whose windows may reach into this block's write region: itself and lower neighbours."""
        options = [sorted({max(k - 1, 0), k}) for k in index]
        return [tuple(c) for c in itertools.product(*options)]

    def consumers(self, index: Sequence[int]) -> list[tuple[int, ...]]:
        """Blocks whose seam merge reads this block's partial sums: itself and upper neighbours."""
        options = [sorted({k, min(k + 1, n - 1)}) for k, n in zip(index, self.grid_shape, strict=True)]
        return [tuple(c) for c in itertools.product(*options)]


def _box(intervals: Sequence[tuple[int, int]]) -> Box:
    return Box(tuple(a for a, _ in intervals), tuple(b for _, b in intervals))


def default_block_size(
    spatial_shape: Sequence[int],
    roi: Sequence[int],
    channels: int,
    budget_bytes: int = 256 * 2**20,
    block_bytes: Callable[[tuple[int, ...]], float] | None = None,
) -> tuple[int, ...]:
    """Largest cubic block whose float32 accumulator (``channels + 1`` planes) fits the budget, or, with
    ``block_bytes`` (what the accumulator of the worst block of a plan cut so holds, e.g. nnU-Net's
    float16 sums of each fold and the windows' shares of the seams), whose ``block_bytes`` does.

    The edge is rounded down to a multiple of 256 (of 32 in 3-D) so write regions align with output
    chunks, never below the window, and never larger than the scene needs.
    """
    dims = len(spatial_shape)
    align = 256 if dims <= 2 else 32

    def clamp(edge: int) -> tuple[int, ...]:
        return tuple(max(r, min(edge, max(n, r))) for n, r in zip(spatial_shape, roi, strict=True))

    if block_bytes is not None:  # from the whole scene down, the first edge that fits, else the least
        top = max(max(n, r) for n, r in zip(spatial_shape, roi, strict=True))
        sizes = list(dict.fromkeys(clamp(edge) for edge in range(-(-top // align) * align, 0, -align)))
        costs = [block_bytes(b) for b in sizes]
        fits = [b for b, c in zip(sizes, costs, strict=True) if c <= budget_bytes]
        return fits[0] if fits else min(zip(costs, sizes, strict=True))[1]
    voxels = budget_bytes // (4 * (channels + 1))
    edge = round(voxels ** (1 / dims))  # the float root of a perfect power may fall just below it
    while edge > 1 and edge**dims > voxels:
        edge -= 1
    while (edge + 1) ** dims <= voxels:
        edge += 1
    return clamp(max(align, edge // align * align))
