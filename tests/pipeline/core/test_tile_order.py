"""Where a block's float16 sums may be handed on whole (they come first in nnU-Net's tile order), and
the block shape that makes that everywhere: slabs across the network's first axis."""

from __future__ import annotations

from pipeline.core.tile_order import leading_spill, ordered_block_size, spill_cells
from pipeline.core.tiling import BlockPlan


def _cover(boxes) -> int:
    return sum(b.size for b in boxes)


def test_slabs_lead_past_their_end_and_keep_windows_only_where_the_lower_slab_reaches():
    order = (2, 1, 0)  # scene axis 2 is the network's first
    plan = BlockPlan.build((50, 44, 40), (20, 16, 8), 0.5, (50, 44, 16), "nnunet")
    middle = plan.block((0, 0, 1))
    lead, rest = leading_spill(plan, middle, order)
    assert [b.start[2] for b in lead] == [middle.write.stop[2]]  # its footprint past its write region
    assert [b.start[2] for b in rest] == [middle.write.start[2]]  # where the slab below reaches in
    assert _cover(lead) + _cover(rest) == _cover(spill_cells(middle))
    # the same cut across the network's last axis: its neighbours' windows interleave with its own
    across = BlockPlan.build((40, 44, 50), (8, 16, 20), 0.5, (16, 44, 50), "nnunet")
    lead, rest = leading_spill(across, across.block((1, 0, 0)), order)
    assert lead == [] and rest


def test_cubes_lead_only_where_no_earlier_block_reaches():
    order = (0, 1, 2)
    plan = BlockPlan.build((60, 60, 60), (16, 16, 16), 0.5, (24, 24, 24), "nnunet")
    block = plan.block((1, 1, 1))
    lead, rest = leading_spill(plan, block, order)
    assert lead and rest
    before = [plan.block(c).read for c in plan.contributors(block.index) if c != block.index]
    before += [plan.block((1, 1, 2)).read, plan.block((1, 2, 1)).read, plan.block((1, 2, 0)).read]
    for cell in lead:
        assert all(cell.intersect(r).empty for r in before), cell


def test_block_size_for_float16_sums_is_a_slab_until_the_scene_is_too_wide():
    order = (0, 1, 2)
    # 512^3, six classes, 64 MB of float16 sums: 32 slices (the 8 windows past it still fit 4 budgets)
    assert ordered_block_size((512, 512, 512), (16, 48, 48), 6, order) == (32, 512, 512)
    assert ordered_block_size((512, 300, 200), (48, 16, 48), 6, (1, 0, 2)) == (512, 32, 200)
    assert ordered_block_size((40, 100, 100), (16, 48, 48), 6, order) == (40, 100, 100)  # one block
    # 2048^2 slices: a slab would hold 4 GB; cubes then, as for float32 sums
    wide = ordered_block_size((512, 2048, 2048), (16, 48, 48), 6, order)
    assert wide[1] < 2048 and wide[2] < 2048
