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
