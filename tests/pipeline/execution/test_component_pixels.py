"""The clean-up's per-pixel steps (pipeline/execution/component_pixels.py) on real land cover: block
labelling gives ``ndimage.label``'s components per class, and each component's first pixel, found
slab by slab, is where it first occurs in raster order."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
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
