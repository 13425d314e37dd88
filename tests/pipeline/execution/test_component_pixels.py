"""The clean-up's per-pixel steps (pipeline/execution/component_pixels.py) on real land cover: block
labelling gives ``ndimage.label``'s components per class, and each component's first pixel, found
slab by slab, is where it first occurs in raster order."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

import pipeline.execution.component_pixels as pixels

LAND_COVER = "geo/derived/S2A_T33UUU_20170216_osm_landcover_10m.tif"


@pytest.mark.parametrize("slab", [2**18, 7, 1000])
def test_labels_and_first_pixels(data, monkeypatch, slab):
    monkeypatch.setattr(pixels, "SLAB_PIXELS", slab)
    with rasterio.open(data / LAND_COVER) as f:
        block = f.read(1)  # 768x1536, classes 0..8
    block[:5, :5] = 255  # some nodata
    ids, classes, first = pixels.label_block(block, 255, first=True)
    assert (ids[block == 255] == 0).all() and (ids[block != 255] > 0).all()
    expected = sum(ndimage.label(block == v)[1] for v in np.unique(block) if v != 255)
    assert len(classes) - 1 == expected > 1000
    values, where = np.unique(ids.ravel(), return_index=True)
    np.testing.assert_array_equal(first[values[1:]], where[1:])
    np.testing.assert_array_equal(classes[ids[block != 255]], block[block != 255])


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 62).flatmap(
        lambda bits: st.lists(st.tuples(st.integers(-(2**bits), 2**bits), st.integers(-3, 2**20)))
    )
)
def test_unique_pairs_are_the_distinct_pairs_sorted(pairs):
    # small ids take one int64 code per pair (negative first ids too: border roots); ids too large
    # for that, or a negative second id, take the stacked unique
    a = np.array([p[0] for p in pairs], np.int64)
    b = np.array([p[1] for p in pairs], np.int64)
    got_a, got_b, inverse = pixels.unique_pairs(a, b, return_inverse=True)
    assert got_a.dtype == got_b.dtype == np.int64
    assert list(zip(got_a.tolist(), got_b.tolist(), strict=True)) == sorted(set(zip(a.tolist(), b.tolist())))
    np.testing.assert_array_equal(got_a[inverse], a)
    np.testing.assert_array_equal(got_b[inverse], b)
    only_a, only_b = pixels.unique_pairs(a, b)
    np.testing.assert_array_equal(only_a, got_a)
    np.testing.assert_array_equal(only_b, got_b)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([np.uint8, np.uint16, np.int16, np.int32]),
    st.lists(st.integers(0, 2**15 - 1), min_size=1, max_size=300),
    st.sampled_from([7, 64, 2**18]),
)
def test_distinct_values_are_numpys_unique(dtype, values, slab):
    block = np.array(values).astype(dtype).reshape(-1, 1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pixels, "SLAB_PIXELS", slab)
        got = pixels.distinct_values(block)
    assert got.dtype == block.dtype
    np.testing.assert_array_equal(got, np.unique(block))


def test_a_seams_pixels_become_its_few_crossing_pairs(data):
    with rasterio.open(data / LAND_COVER) as f:
        block = f.read(1)
    ids, _, _ = pixels.label_block(block, 255)
    up, down = ids[383], ids[384]  # a cut through the middle: each pixel pairs the components either side
    same = block[383] == block[384]
    got_a, got_b = pixels.unique_pairs(up[same], down[same])
    crossing = set(zip(up[same].tolist(), down[same].tolist(), strict=True))
    assert set(zip(got_a.tolist(), got_b.tolist(), strict=True)) == crossing
    assert len(got_a) == len(crossing) < same.sum() / 4
