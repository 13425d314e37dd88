"""Block streaming: reading ahead never holds more than two blocks or one accumulator, and blocks kept
raw (normalised window by window) give exactly the scores of blocks normalised up front."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.networks.nets import UNet

from pipeline.core.blending import Accumulator, importance_map
from pipeline.core.box import Box
from pipeline.core.sinks import ScoreSink, read_padded, read_padded_mask
from pipeline.core.tiling import Block, BlockPlan
from pipeline.engine.arrays import sweep
from pipeline.engine.predictor import Predictor
from pipeline.engine.prefetch import Prefetch
from pipeline.engine.runner import BlockInput, BlockRunner, window_is_empty
from tests.pipeline.formats.sample_data import S2_STACK, read_window


@pytest.fixture(scope="module")
def s2() -> np.ndarray:
    """A real 4-band Sentinel-2 crop as uint16 reflectance."""
    return read_window(S2_STACK, (300, 588), (500, 884))


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(3)
    net = UNet(2, 4, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    return Predictor(net)


def _normalise(raw: np.ndarray, invalid: np.ndarray | None = None) -> np.ndarray:
    x = raw.astype(np.float32)
    x -= 1000.0
    x /= 700.0
    if invalid is not None:
        x[:, invalid] = 0.0
    return x


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_stream_of_blocks_holds_two_blocks_and_one_accumulator(s2, predictor, lanes):
    """With two lanes, the block whose last batch is still computing is a third block input."""
    predictor = Predictor(predictor.model, lanes=lanes)
    image = _normalise(s2)
    plan = BlockPlan.build(image.shape[1:], (32, 32), 0.25, (72, 96))
    owned = [len(list(plan.block_windows(b))) for b in plan.blocks()]
    assert len(owned) == 16 and min(owned) > 5  # every block outlasts a batch (else the batch holds more)
    seen = {"read": 0, "retired": 0, "live_at_read": 0, "accumulators": 0}

    def read(block: Block) -> BlockInput:
        seen["live_at_read"] = max(seen["live_at_read"], seen["read"] - seen["retired"])
        out = BlockInput(block, read_padded(image, block.read))
        seen["read"] += 1
        return out

    def done(block_input: BlockInput, acc: Accumulator | None, channels: int) -> None:
        seen["retired"] += 1
        alive = sum(type(o) is Accumulator for o in gc.get_objects())  # isinstance trips deprecation shims
        seen["accumulators"] = max(seen["accumulators"], alive)

    # batches of 5 windows span block boundaries: the next block's windows run before this one retires
    runner = BlockRunner(
        plan, predictor, importance_map(plan.roi, "gaussian", 0.125), batch_size=5, on_done=done
    )
    runner.run(Prefetch(plan.blocks(), read))
    assert seen["read"] == seen["retired"] == np.prod(plan.grid_shape)
    assert runner.windows_run == plan.window_count
    # the next read starts once the block before the current one is gone, or is only still in a lane
    assert seen["live_at_read"] <= lanes
    assert seen["accumulators"] == 1  # and the next block's sums are only made after that


def test_raw_blocks_prepared_per_window_give_identical_scores(s2, predictor):
    raw = s2.copy()
    raw[:, 120:, :40] = 0  # nodata corner
    invalid = (raw == 0).all(axis=0)
    plan = BlockPlan.build(raw.shape[1:], (40, 36), 0.3, (64, 90))

    def read_raw(block: Block) -> BlockInput:
        nodata = read_padded_mask(invalid, block.read)
        return BlockInput(block, read_padded(raw, block.read, dtype=raw.dtype), nodata, prepare=_normalise)

    def read_normalised(block: Block) -> BlockInput:
        nodata = read_padded_mask(invalid, block.read)
        return BlockInput(block, _normalise(read_padded(raw, block.read, dtype=raw.dtype), nodata), nodata)

    results = []
    for read in (read_raw, read_normalised):
        sink = ScoreSink(spatial_shape=raw.shape[1:])
        stats = sweep(raw, predictor, plan, sink, overlap=0.3, batch_size=3, read=read)
        results.append(sink.out)
    assert stats.windows_skipped > 0
    np.testing.assert_array_equal(results[0], results[1])
    assert np.isnan(results[0][:, -1, 0]).all() and np.isfinite(results[0][:, 0, 0]).all()


@settings(max_examples=200, deadline=None)
@given(
    holes=st.lists(st.tuples(st.integers(0, 23), st.integers(0, 23), st.integers(1, 24)), max_size=6),
    start=st.tuples(st.integers(0, 8), st.integers(0, 8)),
)
def test_a_window_is_empty_exactly_when_all_its_pixels_are_nodata(holes, start):
    """The centre-pixel shortcut never changes the answer: empty iff every pixel is nodata."""
    nodata = np.zeros((24, 24), dtype=bool)
    for r, c, n in holes:
        nodata[r : r + n, c : c + n] = True
    whole = Box((0, 0), (24, 24))
    block = Block((0, 0), ((0, 1), (0, 1)), whole, whole, whole)
    block_input = BlockInput(block, np.zeros((1, 24, 24), np.float32), nodata)
    window = Box(start, (start[0] + 16, start[1] + 16))
    expected = bool(nodata[start[0] : start[0] + 16, start[1] : start[1] + 16].all())
    assert window_is_empty(window, block_input) is expected
