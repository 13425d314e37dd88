"""The seam merge: partial sums spilled past the memory budget come back unchanged and leave no file,
and a sweep of small blocks gives the scores of one block covering the scene, to float rounding."""

from __future__ import annotations

import os

import numpy as np

from pipeline.core.box import Box
from pipeline.core.sinks import ScoreSink
from pipeline.core.tiling import BlockPlan
from pipeline.engine.arrays import sweep
from pipeline.engine.seams import MemorySeams


def _pieces(rng: np.random.Generator, n: int) -> list[tuple[Box, np.ndarray]]:
    return [(Box((i * 4, 0), (i * 4 + 4, 8)), rng.random((3, 4, 8), dtype=np.float32)) for i in range(n)]


def test_seams_past_the_budget_spill_to_disk_and_come_back_unchanged():
    rng = np.random.default_rng(0)
    small, big = _pieces(rng, 1), _pieces(rng, 3)
    seams = MemorySeams(budget_bytes=small[0][1].nbytes)
    try:
        seams.put((0, 0), small)  # fits: kept in memory
        seams.put((0, 1), big)  # would pass the budget: spilled
        assert seams.nbytes == small[0][1].nbytes
        assert seams._dir is not None
        spilled = os.listdir(seams._dir.name)
        assert len(spilled) == 3
        for (box, want), (got_box, got) in zip(big, seams.get((0, 1)), strict=True):
            assert got_box == box and np.array_equal(got, want)
        assert np.array_equal(seams.get((0, 0))[0][1], small[0][1])
        seams.drop((0, 1))
        seams.drop((0, 0))
        assert seams.nbytes == 0 and os.listdir(seams._dir.name) == []
        assert seams.get((9, 9)) == []
    finally:
        seams.close()
    assert seams._dir is None


def _model(batch: np.ndarray) -> np.ndarray:
    """A position-dependent score, so any window added twice or missed changes the result."""
    return np.concatenate([np.sin(batch), np.cos(3 * batch)], axis=1).astype(np.float32)


def test_small_blocks_merge_to_the_scores_of_one_block():
    image = np.random.default_rng(1).random((1, 200, 170), dtype=np.float32)
    results = {}
    for blocks in [(200, 170), (48, 40)]:
        plan = BlockPlan.build(image.shape[1:], (32, 32), 0.25, blocks)
        sink = ScoreSink(spatial_shape=image.shape[1:])
        stats = sweep(image, _model, plan, sink, channels=2, seam_budget_bytes=4096)
        assert stats.windows_run == plan.window_count  # every window once, whatever the cut
        results[blocks] = np.asarray(sink.out)
    one, many = results.values()
    np.testing.assert_allclose(many, one, atol=1e-5)
