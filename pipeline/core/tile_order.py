"""Where nnU-Net's tile order lets a block hand on its float16 sums whole instead of window by window.

``nnUNetPredictor`` adds its tiles into float16 sums in lexicographic order over the network's axes, so
a voxel's sum depends on the order of the windows that cover it. Where two blocks' windows interleave
in that order (neighbours across any axis but the network's first), each window's share must be kept
apart and replayed at the seam merge (``pipeline.core.blending.replay``). But every window of a block
lower along the network's first axis comes before every window of a block higher along it: where a
block's windows are the only ones before the others, its float16 sums are a prefix of every voxel's
sequence, exact as they stand, and cost two bytes a channel instead of four per window.

Hence also the block shape for such sums: slabs cut across the first network axis only have no seams
that need windows kept apart, so they hold a fraction of what cubes do.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from pipeline.core.box import Box
from pipeline.core.tiling import Block, BlockPlan, default_block_size


def spill_cells(block: Block) -> list[Box]:
    """The block's spill (footprint less interior) cut into cells by the interior's planes: each cell
    lies wholly inside or outside every neighbour's footprint along each axis."""
    read = block.read
    inner = read.intersect(block.interior)
    if inner.empty:
        return [] if read.empty else [read]
    cuts = [
        ((r0, i0), (i0, i1), (i1, r1))
        for r0, r1, i0, i1 in zip(read.start, read.stop, inner.start, inner.stop, strict=True)
    ]
    cells = []
    for parts in itertools.product(*cuts):
        box = Box(tuple(a for a, _ in parts), tuple(b for _, b in parts))
        if not box.empty and box != inner:
            cells.append(box)
    return cells


def leading_spill(plan: BlockPlan, block: Block, order: Sequence[int]) -> tuple[list[Box], list[Box]]:
    """``(lead, rest)``: the spill cells (inside the scene) where no other block's window comes before
    this block's in nnU-Net's order (its sums hand on whole), and the others (window by window).

    A cell leads when every other block reaching into it is higher along the network's first axis.
    """
    first = order[0]
    options = [range(max(k - 1, 0), min(k + 2, n)) for k, n in zip(block.index, plan.grid_shape, strict=True)]
    before = [
        plan.block(c).read
        for c in itertools.product(*options)
        if c != block.index and c[first] <= block.index[first]
    ]
    lead, rest = [], []
    for cell in spill_cells(block):
        cell = cell.intersect(plan.scene)
        if cell.empty:
            continue
        (rest if any(not cell.intersect(r).empty for r in before) else lead).append(cell)
    return lead, rest


def ordered_block_size(
    spatial_shape: Sequence[int],
    roi: Sequence[int],
    channels: int,
    order: Sequence[int],
    budget_bytes: int = 64 * 2**20,
    align: int = 32,
) -> tuple[int, ...]:
    """Blocks for nnU-Net's float16 sums: slabs across the network's first axis (whole along the
    others, so no window is kept apart) as thick as ``budget_bytes`` of float16 sums allows, at least
    ``align`` (and the window); cubes by the float32 rule when even such a slab would take more than
    four budgets (a scene too wide for slabs)."""
    first = order[0]
    whole = [max(int(n), int(r)) for n, r in zip(spatial_shape, roi, strict=True)]
    across = math.prod(n for a, n in enumerate(whole) if a != first)
    per_voxel = 2 * (channels + 1)
    edge = budget_bytes // (per_voxel * across) // align * align
    edge = max(edge, align, int(roi[first]))
    if edge >= whole[first]:
        return tuple(whole)
    reach = edge + int(roi[first])  # the slab's footprint: its windows reach past its write region
    if reach * across * per_voxel > 4 * budget_bytes:
        return default_block_size(spatial_shape, roi, channels, budget_bytes)
    whole[first] = edge
    return tuple(whole)
