"""CPU lanes: batches really run side by side, one thread each, and change no byte of the result."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from pipeline import infer_array
from pipeline.engine.lanes import MAX_LANE_VOXELS, Lanes, cpu_lanes, lanes_for
from pipeline.engine.predictor import Predictor
from tests.pipeline.formats.sample_data import S2_STACK, read_window


class Observed(torch.nn.Module):
    """Records, per forward, the thread, its torch thread count and how many forwards overlapped."""

    def __init__(self, net: torch.nn.Module, fail_at: int | None = None) -> None:
        super().__init__()
        self.net, self.fail_at = net, fail_at
        self.lock = threading.Lock()
        self.running = self.most_at_once = self.calls = 0
        self.threads: set[int] = set()
        self.intra_op: set[int] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.calls += 1
            call = self.calls
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
            self.threads.add(threading.get_ident())
            self.intra_op.add(torch.get_num_threads())
        try:
            if call == self.fail_at:
                raise RuntimeError("model failed on this batch")
            time.sleep(0.02)  # long enough for the other lane to start its batch
            return self.net(x)
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    raw = read_window(S2_STACK, (300, 556), (500, 788)).astype(np.float32)
    return (raw - 1000.0) / 700.0


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(5)
    return UNet(2, 4, 3, channels=(8, 16, 32), strides=(2, 2)).eval()


def test_two_lanes_run_batches_at_once_on_one_thread_each(scene, net):
    observed = Observed(net)
    infer_array(scene, Predictor(observed, lanes=2), patch_size=64, batch_size=2, block_size=128)
    assert observed.calls > 4
    assert observed.most_at_once == 2
    assert len(observed.threads) == 2 and threading.get_ident() not in observed.threads
    assert observed.intra_op == {1}


def test_big_batches_run_one_at_a_time_on_the_callers_threads(scene, net):
    observed = Observed(net)
    batch = MAX_LANE_VOXELS // (64 * 64) + 1
    infer_array(scene, Predictor(observed, lanes=2), patch_size=64, batch_size=batch)
    assert observed.threads == {threading.get_ident()}
    assert lanes_for(4, MAX_LANE_VOXELS) == 4 and lanes_for(4, MAX_LANE_VOXELS + 1) == 1


def test_lanes_leave_the_callers_thread_count_alone():
    before = torch.get_num_threads()
    Lanes(3).submit(torch.get_num_threads).result()
    assert torch.get_num_threads() == before
    seen: list[int] = []
    later = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    later.start()
    later.join()
    assert seen == [before]  # a thread started afterwards still gets the process default


@pytest.mark.parametrize("block_size", [None, 96])
def test_scores_are_byte_identical_with_one_or_two_lanes_and_a_one_thread_worker(scene, net, block_size):
    common = dict(patch_size=64, overlap=0.3, batch_size=3, block_size=block_size)
    two = infer_array(scene, Predictor(net, lanes=2), **common)
    one_lane_one_thread = Lanes(2).submit(lambda: infer_array(scene, Predictor(net, lanes=1), **common))
    assert np.array_equal(two, one_lane_one_thread.result())  # what a one-thread Dask worker computes


def test_a_failing_batch_raises_and_later_batches_never_start(scene, net):
    observed = Observed(net, fail_at=2)
    with pytest.raises(RuntimeError, match="model failed on this batch"):
        infer_array(scene, Predictor(observed, lanes=2), patch_size=64, batch_size=1, block_size=128)
    assert observed.calls < 8  # of 20 windows: the run stopped at the failure, not at the end


def test_lane_count():
    assert cpu_lanes(None) == torch.get_num_threads()
    assert cpu_lanes(3) == 3
    with pytest.raises(ValueError, match="at least 1"):
        cpu_lanes(0)
    gpu_like = Predictor(lambda x: x[:, :1])  # not an nn.Module: called from one thread only
    assert gpu_like.lanes == 1


def test_a_forked_child_starts_its_own_lanes():
    import multiprocessing

    Lanes(2).submit(int).result()  # the parent's pool exists and has run
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.apply(_lanes_in_child, ()) == 7


def _lanes_in_child() -> int:
    return Lanes(2).submit(lambda: 7).result(timeout=30)
