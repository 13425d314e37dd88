"""Properties of the window grid and its block partition (pure maths, no arrays)."""

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from pipeline.core.box import Box
from pipeline.core.tiling import GRIDS, BlockPlan, axis_starts, default_block_size

overlaps = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.6, 0.75, 0.9])


@st.composite
def plans(draw, max_dims=3):
    dims = draw(st.integers(1, max_dims))
    roi = [draw(st.integers(1, 24)) for _ in range(dims)]
    shape = [draw(st.integers(1, 90)) for _ in range(dims)]
    block = [r + draw(st.integers(0, 40)) for r in roi]
    return BlockPlan.build(shape, roi, draw(overlaps), block, draw(st.sampled_from(GRIDS)))


@given(size=st.integers(1, 400), roi=st.integers(1, 64), overlap=overlaps)
def test_axis_starts_match_monai(size, roi, overlap):
    padded = max(size, roi)
    interval = _get_scan_interval((padded,), (roi,), 1, (overlap,))
    monai = sorted({s[0].start for s in dense_patch_slices((padded,), (roi,), interval)})
    shift = (max(roi - size, 0)) // 2  # MONAI pads symmetrically when the axis is short
    assert list(axis_starts(size, roi, overlap)) == [s - shift for s in monai]


@settings(deadline=None)
@given(size=st.integers(1, 400), roi=st.integers(1, 64), overlap=overlaps)
def test_nnunet_grid_matches_nnunet(size, roi, overlap):
    """nnU-Net's own step rule (its padding to the patch for short axes; one window per slice for a
    one-voxel window, as its 2-D models run over volumes)."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    if roi == 1:
        expected = list(range(size))
    elif size < roi:
        expected = [-((roi - size) // 2)]  # pad_nd_image puts the smaller half before
    else:
        expected = compute_steps_for_sliding_window((size,), (roi,), 1.0 - overlap)[0]
    assert list(axis_starts(size, roi, overlap, "nnunet")) == expected


@settings(max_examples=150, deadline=None)
@given(plans())
def test_windows_cover_scene_and_each_is_owned_once(plan):
    owned = np.zeros(plan.window_grid_shape, dtype=int)
    covered = np.zeros(plan.spatial_shape, dtype=bool)
    for block in plan.blocks():
        for index in plan.block_windows(block):
            owned[index] += 1
            window = plan.window(index)
            inside = window.intersect(plan.scene)
            covered[inside.slices()] = True
            assert block.read.contains(window)
    assert (owned == 1).all()
    assert covered.all()


@settings(max_examples=150, deadline=None)
@given(plans())
def test_write_regions_partition_scene_inside_bounds(plan):
    count = np.zeros(plan.spatial_shape, dtype=int)
    for block in plan.blocks():
        assert plan.scene.contains(block.write)
        assert block.write.contains(block.interior)
        count[block.write.slices()] += 1
    assert (count == 1).all()


@settings(max_examples=60, deadline=None)
@given(plans(max_dims=2))
def test_interior_touched_only_by_own_windows_and_seams_only_by_contributors(plan):
    owner = np.full(plan.spatial_shape, -1, dtype=int)
    flat = {b.index: i for i, b in enumerate(plan.blocks())}
    touched_by = [set() for _ in range(int(np.prod(plan.spatial_shape)))]
    for block in plan.blocks():
        for index in plan.block_windows(block):
            inside = plan.window(index).intersect(plan.scene)
            for pos in itertools.product(*(range(a, b) for a, b in zip(inside.start, inside.stop))):
                touched_by[np.ravel_multi_index(pos, plan.spatial_shape)].add(block.index)
    for block in plan.blocks():
        owner[block.write.slices()] = flat[block.index]
        allowed = set(plan.contributors(block.index))
        for pos in itertools.product(*(range(a, b) for a, b in zip(block.write.start, block.write.stop))):
            who = touched_by[np.ravel_multi_index(pos, plan.spatial_shape)]
            assert who <= allowed
            if block.interior.contains(Box(pos, tuple(p + 1 for p in pos))):
                assert who == {block.index}


@settings(max_examples=100, deadline=None)
@given(plans())
def test_contributors_and_consumers_are_mutual(plan):
    for block in plan.blocks():
        for c in plan.contributors(block.index):
            assert block.index in plan.consumers(c)
        for c in plan.consumers(block.index):
            assert block.index in plan.contributors(c)


def test_block_smaller_than_window_is_refused():
    try:
        BlockPlan.build((100, 100), 32, 0.25, 16)
    except ValueError as exc:
        assert "smaller than the window" in str(exc)
    else:
        raise AssertionError("expected ValueError")


@given(
    st.lists(st.integers(1, 50000), min_size=2, max_size=3),
    st.integers(8, 256),
    st.integers(1, 64),
    st.sampled_from([8, 64, 256, 1024]),
)
def test_default_block_size_is_the_largest_cube_that_fits_the_budget(shape, roi, channels, budget_mb):
    budget = budget_mb * 2**20
    rois = [roi] * len(shape)
    block = default_block_size(shape, rois, channels, budget_bytes=budget)
    align = 256 if len(shape) <= 2 else 32
    plane_bytes = 4 * (channels + 1)  # the accumulator: K score planes and one weight plane, float32
    assert all(b >= r for b, r in zip(block, rois))  # a block holds at least one window
    assert all(b <= max(n, r) for b, n, r in zip(block, shape, rois))  # and no more than the scene
    floor = [max(r, min(align, max(n, r))) for n, r in zip(shape, rois)]
    if any(b > f for b, f in zip(block, floor)):  # above its floor, a block fits the budget
        assert math.prod(block) * plane_bytes <= budget
    free = [b for b, n, r in zip(block, shape, rois) if r < b < n]  # edges neither window nor scene
    if free:
        edge = free[0]
        assert all(b == edge for b in free) and edge % align == 0
        assert (edge + align) ** len(shape) * plane_bytes > budget  # one step more would not fit
