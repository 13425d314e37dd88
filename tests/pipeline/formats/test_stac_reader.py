"""A STAC Item of single-band COGs at 10 and 20 m, read as one scene (the Sentinel-2 sample, split)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from pipeline.core.box import Box
from pipeline.errors import FormatError, InputError
from pipeline.formats.source import SceneSource
from pipeline.formats.stac_reader import open_stac
from tests.pipeline.formats.sample_data import S2_STACK, requires_data
from tests.pipeline.formats.stac_samples import ACQUIRED, split_s2

pytestmark = requires_data
CHANNELS = ["B02", "B03", "B04", "B08"]


@pytest.fixture(scope="module")
def stack():
    with rasterio.open(S2_STACK) as ds:
        return ds.read(), ds.transform


@pytest.fixture(scope="module")
def item(tmp_path_factory):
    return split_s2(tmp_path_factory.mktemp("s2-bands"))


def test_bands_at_two_resolutions_read_as_one_scene_on_the_finest_grid(item, stack):
    pixels, transform = stack
    scene = SceneSource("stac", (str(item),), (("channels", tuple(CHANNELS)),)).open()
    try:
        assert scene.shape == pixels.shape and scene.meta.transform == transform
        assert scene.meta.crs.to_epsg() == 32633 and scene.item_datetime == ACQUIRED
        got = scene.read(Box.from_shape(scene.spatial_shape))
        np.testing.assert_array_equal(got[:3], pixels[:3])  # the 10 m bands, untouched
        nir = got[3].astype(float)  # 20 m, resampled by GDAL onto the 10 m grid
        assert np.corrcoef(nir.ravel(), pixels[3].ravel())[0, 1] > 0.95
        assert abs(nir.mean() - pixels[3].mean()) < 0.01 * pixels[3].mean()
        outside = scene.read_nodata(Box((-4, -4), (4, 4)))
        assert outside[:4].all() and not outside[4:, 4:].any()
    finally:
        scene.close()


def test_channels_match_asset_keys_when_bands_have_no_names(tmp_path, stack):
    bare = split_s2(tmp_path, eo=False, coarse={})
    with pytest.raises(InputError) as err:
        open_stac(str(bare), channels=CHANNELS)
    message = str(err.value)
    assert str(bare) in message and "'B02'" in message and "blue, green, nir, red" in message
    assert "--bands B02=ASSET" in message and "\n" not in message
    mapping = {"B02": "blue", "B03": "green", "B04": "red", "B08": "NIR"}  # keys, any case
    scene = open_stac(str(bare), channels=CHANNELS, bands=mapping)
    np.testing.assert_array_equal(scene.read(Box.from_shape(scene.spatial_shape)), stack[0])
    scene.close()


def test_the_bundle_grid_and_refusals(item, tmp_path):
    scene = open_stac(str(item), channels=["B08", "B04"], target_gsd=(20.0, 20.0))
    assert scene.shape == (2, 384, 768) and scene.meta.gsd == (20.0, 20.0)
    assert scene.read(Box((0, 0), (8, 8))).shape == (2, 8, 8)
    scene.close()
    with pytest.raises(InputError, match="not bundle channels"):
        open_stac(str(item), channels=CHANNELS, bands={"SWIR": "swir16"})
    collection = tmp_path / "collection.json"
    collection.write_text(json.dumps({**json.loads(item.read_text()), "type": "Collection"}))
    with pytest.raises((InputError, FormatError), match=r"collection\.json") as err:
        open_stac(str(collection), channels=CHANNELS)
    assert "\n" not in str(err.value)
