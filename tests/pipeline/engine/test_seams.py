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


def test_float16_sums_in_nnunet_order_are_nnunets_whatever_the_blocks(data):
    """``order``: float16 sums and weights added tile by tile in nnU-Net's order (lexicographic over the
    network's axes, here the scene's reversed), as ``nnUNetPredictor`` adds them, then divided in float16;
    one block, and an uneven cut whose seams spill to disk, give that loop's scores bit for bit."""
    import itertools

    import nibabel as nib
    import torch

    from pipeline.core.blending import importance_map
    from pipeline.core.tiling import axis_starts

    ct = np.asanyarray(nib.load(data / "medical" / "totalsegmentator" / "example_ct_sm.nii.gz").dataobj)
    image = np.ascontiguousarray((ct[30:80, 20:64, 4:24].astype(np.float32) + 200) / 300)[None]
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 3, padding=1).eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(np.ascontiguousarray(batch))).numpy()

    roi, order = (20, 16, 8), (2, 1, 0)
    g = torch.from_numpy(np.array(importance_map(roi, "nnunet")))
    sums = torch.zeros((3, *image.shape[1:]), dtype=torch.float16)
    weight = torch.zeros(image.shape[1:], dtype=torch.float16)
    starts = [axis_starts(n, r, 0.5, "nnunet") for n, r in zip(image.shape[1:], roi, strict=True)]
    for start in sorted(itertools.product(*starts), key=lambda s: tuple(s[a] for a in order)):
        where = tuple(slice(s, s + r) for s, r in zip(start, roi, strict=True))
        prediction = torch.from_numpy(predict(image[(None, slice(None), *where)])[0])
        prediction *= g
        sums[(slice(None), *where)] += prediction
        weight[where] += g.half()
    expected = torch.div(sums, weight).float().numpy()
    assert float(np.abs(expected - predict(image)[0]).max()) > 0  # the windows' edges count

    # one block; an uneven cut whose seams spill to disk; slabs across the network's first axis (scene
    # axis 2), where each block hands on its float16 sums whole past its end (tile_order.leading_spill)
    for block, budget in ((None, 64 * 2**20), ((23, 21, 11), 0), ((50, 44, 9), 0)):
        plan = BlockPlan.build(image.shape[1:], roi, 0.5, block, "nnunet")
        sink = ScoreSink(spatial_shape=image.shape[1:])
        sweep(image, predict, plan, sink, blend="nnunet", overlap=0.5, batch_size=1, order=order,
              seam_budget_bytes=budget)  # fmt: skip
        np.testing.assert_array_equal(sink.out, expected, err_msg=str(block))

    # nodata (zero weight, uncovered) reaching across the seams: the shares that hold it keep their
    # weight plane; whatever the cut, the one-block scores
    mask = np.zeros(image.shape[1:], dtype=bool)
    mask[:9, :, :] = True
    mask[20:30, 10:20, 5:15] = np.random.default_rng(2).random((10, 10, 10)) < 0.3
    scores = []
    for block in (None, (23, 21, 11), (50, 44, 9)):
        plan = BlockPlan.build(image.shape[1:], roi, 0.5, block, "nnunet")
        sink = ScoreSink(spatial_shape=image.shape[1:])
        sweep(image, predict, plan, sink, blend="nnunet", overlap=0.5, batch_size=1, order=order, mask=mask,
              seam_budget_bytes=0)  # fmt: skip
        scores.append(np.asarray(sink.out))
    assert np.isnan(scores[0]).any() and not np.isnan(scores[0]).all()
    for other in scores[1:]:
        np.testing.assert_array_equal(other, scores[0])
