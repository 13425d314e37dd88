"""The STAC Item each geo scene gets, from a real job on the Sentinel-2 sample, validated offline."""

from __future__ import annotations

import json
from pathlib import Path

import pystac
import pytest
import rasterio
from pystac.extensions.label import LabelExtension
from pystac.extensions.mlm import MLMExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension

from models.bundle import load_bundle
from pipeline.formats.stac_item import mlm_name
from pipeline.job.config import load_config
from pipeline.job.skeleton import run_job
from tests.pipeline.formats.sample_data import S2_STACK, requires_data
from tests.pipeline.formats.stac_schemas import OfflineValidator, validate

pytestmark = requires_data

EXTENSIONS = {"projection", "raster", "label", "mlm", "processing"}


@pytest.fixture(scope="module")
def s2_item(tmp_path_factory, bundle_factory):
    out = tmp_path_factory.mktemp("stac")
    bundle = bundle_factory(2, 4, ["land", "water"], 64, [4, 8])
    over = {"outputs.probabilities": True, "outputs.polygons": True}
    cfg = load_config(None, {"input": str(S2_STACK), "output": str(out), "model": str(bundle), **over})
    (result,) = run_job(cfg)
    assert result.status == "ok", result.reason
    return result, load_bundle(bundle), Path(result.outputs["item"])


def test_item_validates_offline_against_core_and_every_extension(s2_item):
    _, _, path = s2_item
    data = json.loads(path.read_text())
    checked = validate(data)
    assert checked[0].endswith("/v1.1.0/item-spec/json-schema/item.json")
    assert {uri.split("/")[3] for uri in checked[1:]} == EXTENSIONS


def test_item_tells_the_exact_grid_the_classes_and_the_model(s2_item):
    result, bundle, path = s2_item
    item = pystac.Item.from_file(str(path))
    labels = Path(result.outputs["labels"])
    with rasterio.open(labels) as cog:
        proj = ProjectionExtension.ext(item)
        assert proj.code == f"EPSG:{cog.crs.to_epsg()}"
        assert proj.shape == [cog.height, cog.width]
        assert proj.transform[:6] == list(cog.transform)[:6]  # exact, not rounded
        band = RasterExtension.ext(item.assets["labels"]).bands[0]
        assert (band.nodata, band.data_type) == (cog.nodata, cog.dtypes[0])
    assert item.assets["labels"].get_absolute_href() == str(labels)
    for kind in ("probabilities", "polygons", "style", "quicklook", "report"):
        assert Path(item.assets[kind].get_absolute_href()) == Path(result.outputs[kind])
    assert LabelExtension.ext(item).label_classes[0].classes == ["land", "water"]
    assert item.properties["label:tasks"] == ["segmentation"]
    mlm = MLMExtension.ext(item)
    assert bundle.config.name == "b" and mlm.mlm_name == "b-model"  # MLM names have 3+ characters
    assert list(mlm.input[0].bands) == list(bundle.config.inputs.channels)
    assert [c.name for c in mlm.output[0].classes] == ["land", "water"]
    assert item.assets["model"].extra_fields["tilewise:bundle_hash"] == bundle.hash
    assert item.properties["processing:software"]["tilewise"]
    (source,) = item.get_links("derived_from")
    assert source.href == str(S2_STACK)


def test_model_names_become_valid_mlm_names():
    assert [mlm_name(n) for n in ("b", "3-class", "s2-water", "unet (v2)!")] == [
        "b-model", "model-3-class", "s2-water", "unet -v2"
    ]  # fmt: skip


def test_the_validator_never_fetches(s2_item):
    _, _, path = s2_item
    data = json.loads(path.read_text())
    data["stac_extensions"].append("https://stac-extensions.github.io/eo/v9.9.9/schema.json")
    with pytest.raises(LookupError, match="no local copy"):  # an error, never a download
        pystac.validation.validate_dict(data, validator=OfflineValidator())
    broken = json.loads(path.read_text())
    broken["properties"]["proj:shape"] = [512]
    with pytest.raises(pystac.errors.STACValidationError, match="proj"):
        validate(broken)


def test_a_grid_that_runs_off_its_crs_gets_a_null_geometry_not_a_lost_scene():
    """98304 pixels of 300 m east of a UTM zone's origin span ~30,000 km: GDAL cannot take that outline
    to WGS84. The item still validates and keeps the exact native grid; an ordinary grid gets its outline."""
    from affine import Affine
    from rasterio.crs import CRS

    from pipeline.formats.scene import GeoMeta
    from pipeline.formats.stac_item import ModelCard, build_item

    card = ModelCard("b", "unet", ["r"], [64, 64], {"kind": "none"}, ["land", "water"],
                     ["#000000", "#ffffff"], "h", "w.safetensors")  # fmt: skip
    utm = CRS.from_epsg(32618)
    grid = Affine(300.0, 0, 101985.0, 0, -300.0, 2826915.0)
    off = build_item("off", meta=GeoMeta(utm, grid), shape=(98304, 98304), nodata=255, outputs={}, model=card,
                     source="mosaic.vrt")  # fmt: skip
    assert off.geometry is None and off.bbox is None
    assert ProjectionExtension.ext(off).shape == [98304, 98304]
    validate(off.to_dict())
    ok = build_item("ok", meta=GeoMeta(utm, grid), shape=(1024, 1024), nodata=255, outputs={}, model=card,
                    source="tile.tif")  # fmt: skip
    assert ok.geometry["type"] == "Polygon" and -80 < ok.bbox[0] < ok.bbox[2] < -70
