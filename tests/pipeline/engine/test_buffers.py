"""Batch buffers are used again only once nothing refers to them (pipeline/engine/buffers.py), so
results a caller keeps are never overwritten, and a run's outputs do not depend on the reuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import infer_array
from pipeline.engine.buffers import MAX_KEPT_BYTES, BufferPool, batch_results
from pipeline.engine.predictor import Predictor


def test_a_buffer_comes_back_only_once_every_view_and_tensor_of_it_is_gone():
    pool = BufferPool(keep=2)
    a = pool.take((2, 3))
    a[...] = 1.0
    b = pool.take((2, 3))
    assert not np.shares_memory(a, b)
    view = a[1]
    tensor = torch.from_numpy(a[0])
    del a
    c = pool.take((2, 3))  # both kept buffers are still referred to: a fresh one, not kept
    assert not np.shares_memory(c, view) and not np.shares_memory(c, b)
    assert pool.nbytes == 2 * 6 * 4
    del view, c
    d = pool.take((2, 3))  # the tensor still holds the first buffer
    assert not np.shares_memory(d, tensor.numpy())
    assert (tensor.numpy() == 1.0).all()
    del d, tensor, b
    e = pool.take((3,), np.uint16)  # free again: any dtype and a smaller shape fit in it
    f = pool.take((5, 5))  # the other one is free too, but too small: it grows
    assert e.dtype == np.uint16 and e.flags.c_contiguous and f.shape == (5, 5)
    assert pool.nbytes == 6 * 4 + 25 * 4


def test_predictor_results_kept_by_the_caller_are_never_overwritten():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(2, 3, 16, 16)).astype(np.float32) for _ in range(12)]
    pool = BufferPool(keep=4)
    for activation, fn in (("softmax", lambda t: torch.softmax(t, dim=1)), ("sigmoid", torch.sigmoid)):
        predict = Predictor(net, activation=activation, lanes=1)
        with batch_results(pool):
            kept = [predict(b) for b in batches]  # more results held than the pool keeps buffers
        with torch.inference_mode():
            want = [fn(net(torch.from_numpy(b))).numpy() for b in batches]
        for got, ref in zip(kept, want, strict=True):
            np.testing.assert_array_equal(got, ref)
        assert pool.nbytes == 4 * 2 * 4 * 16 * 16 * 4
        del kept
    predict = Predictor(net, activation="softmax", lanes=1)
    with batch_results(pool):
        first = predict(batches[0])
        address = first.ctypes.data
        del first
        again = predict(batches[1])  # the first result was let go: its buffer is used again
    assert again.ctypes.data == address
    np.testing.assert_array_equal(again, _softmax(net, batches[1]))
    outside = predict(batches[2])  # no runner's pool: a result of its own, as ever
    assert not np.shares_memory(outside, again)


def _softmax(net: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return torch.softmax(net(torch.from_numpy(batch)), dim=1).numpy()


def test_batches_larger_than_the_mmap_threshold_are_not_kept():
    pool = BufferPool(keep=2)
    big = pool.take((MAX_KEPT_BYTES // 4 + 1,))
    assert big.size and pool.nbytes == 0


class _Copy(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


@pytest.mark.parametrize("activation", ["none", "softmax"])
def test_a_model_that_hands_back_its_input_gets_the_same_scores_as_one_that_copies_it(activation):
    """A batch's input and result buffers are only used again once its prediction has been blended."""
    rng = np.random.default_rng(1)
    image = rng.normal(size=(2, 200, 170)).astype(np.float32)
    runs = []
    for model in (torch.nn.Identity(), _Copy()):
        predict = Predictor(model, lanes=2, activation=activation)  # two batches in flight side by side
        runs.append(infer_array(image, predict, patch_size=32, overlap=0.25, batch_size=2, block_size=64))
    np.testing.assert_array_equal(runs[0], runs[1])
