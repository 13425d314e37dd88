"""The labels sink's argmax is numpy's argmax over the classes, ties and NaN included."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.sinks import argmax_labels


@settings(max_examples=200, deadline=None)
@given(
    classes=st.integers(1, 7),
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    seed=st.integers(0, 2**32 - 1),
    specials=st.sampled_from([(), (np.nan,), (-0.0, 0.0), (np.inf, -np.inf), (np.nan, np.inf), (3e38,)]),
)
def test_argmax_labels_is_numpys_argmax(classes, shape, seed, specials):
    rng = np.random.default_rng(seed)
    sums = rng.integers(0, 4, (classes, *shape)).astype(np.float32)  # small integers: many ties
    for value in specials:
        sums[rng.random(sums.shape) < 0.1] = value
    weight = rng.integers(-1, 3, shape).astype(np.float32)
    expected = np.argmax(sums, axis=0).astype(np.uint8)
    expected[weight <= 0] = 7
    with np.errstate(over="ignore", invalid="ignore"):
        got = argmax_labels(sums, weight, 7)
    np.testing.assert_array_equal(got, expected)


def test_argmax_labels_of_a_strided_view_in_slabs(monkeypatch):
    import pipeline.core.sinks as sinks

    monkeypatch.setattr(sinks, "ARGMAX_SLAB_PIXELS", 97)  # many slabs, a ragged last one
    rng = np.random.default_rng(3)
    block = rng.random((4, 120, 90)).astype(np.float32)
    view = block[:, 7:101, 3:80]  # as the engine passes an accumulator's interior
    labels = argmax_labels(view, np.ones(view.shape[1:], np.float32), 255)
    np.testing.assert_array_equal(labels, np.argmax(view, axis=0))


def test_float16_sums_finished_in_slabs_equal_one_pass(monkeypatch):
    """nnU-Net's float16 sums (two folds apart) finished slab by slab give the labels and uint8
    probabilities of the whole box finished at once, into a canvas offset from the scene's origin."""
    import pipeline.core.sinks as sinks
    from pipeline.core.blending import nnunet_finalise
    from pipeline.core.box import Box

    rng = np.random.default_rng(5)
    shape = (23, 9, 7)
    sums = (rng.random((2 * 3, *shape)) * 4).astype(np.float16)
    weight = (rng.random(shape) * 2).astype(np.float16)
    weight[rng.random(shape) < 0.05] = 0  # uncovered voxels: nodata labels, zero probabilities
    box = Box((5, 2, 1), (5 + shape[0], 2 + shape[1], 1 + shape[2]))
    scores = nnunet_finalise(sums, weight, folds=2)
    expected = np.argmax(np.nan_to_num(scores, nan=-np.inf), axis=0).astype(np.uint8)
    expected[weight <= 0] = 255

    def written() -> tuple[np.ndarray, np.ndarray]:
        labels = np.zeros((30, 12, 9), np.uint8)
        probs = np.zeros((3, 30, 12, 9), np.uint8)
        sink = sinks.LabelSink(labels, probabilities=probs, origin=(3, 1, 0), activation="none", folds=2)
        sink.write(box, sums.copy(), weight.copy())
        return labels, probs

    whole = written()
    monkeypatch.setattr(sinks, "HALF_SLAB_PIXELS", 2 * 9 * 7 + 5)  # two planes a slab, a ragged last one
    assert len(sinks.slabs(box, sinks.HALF_SLAB_PIXELS)) == 12
    cut = written()
    inside = (slice(2, 25), slice(1, 10), slice(1, 8))
    np.testing.assert_array_equal(cut[0][inside], expected)
    np.testing.assert_array_equal(cut[0], whole[0])
    np.testing.assert_array_equal(cut[1], whole[1])
    assert cut[1][(slice(None), *inside)].any()
