"""Class polygons from the real building and land-cover rasters: areas, CRS, strip merging."""

from __future__ import annotations

from collections import Counter

import fiona
import numpy as np
import pytest
import rasterio
import zarr
from rasterio.crs import CRS
from scipy import ndimage

from pipeline.errors import OutputError
from pipeline.formats.geotiff import open_geotiff
from pipeline.formats.vector import write_polygons
from tests.pipeline.formats.sample_data import BUILDINGS_MASK, S2_LANDCOVER, requires_data

pytestmark = requires_data

LANDCOVER = ["unlabelled", "forest", "farm", "meadow", "grass", "scrub", "wetland", "residential", "water"]


def _load(path):
    scene = open_geotiff(str(path))
    with rasterio.open(path) as src:
        return scene.meta, src.read(1)


def _features(path):
    with fiona.open(path, layer="classes") as layer:
        crs = CRS.from_wkt(layer.crs_wkt)
        props = [(f.properties, f.geometry) for f in layer]
        feats = [(p["class_id"], p["class_name"], p["area"], g) for p, g in props]
        return crs, feats


def test_building_polygons_match_the_mask(tmp_path):
    meta, mask = _load(BUILDINGS_MASK)
    dest = tmp_path / "buildings.gpkg"
    n = write_polygons(mask, dest, meta=meta, class_names=["background", "building"], skip_classes=[0])
    crs, feats = _features(dest)
    assert crs == meta.crs
    _, components = ndimage.label(mask == 1)
    assert n == len(feats) == components  # one polygon per 4-connected building region
    assert {(c, name) for c, name, _, _ in feats} == {(1, "building")}
    total = sum(area for _, _, area, _ in feats)
    assert total == pytest.approx(mask.sum() * 0.25, rel=0.01)
    left, bottom, right, top = rasterio.transform.array_bounds(900, 900, meta.transform)
    for _, _, _, geom in feats:
        xy = np.asarray(geom.coordinates[0])
        assert (xy[:, 0] >= left).all() and (xy[:, 0] <= right).all()
        assert (xy[:, 1] >= bottom).all() and (xy[:, 1] <= top).all()
        cols = (xy[:, 0] - meta.transform.c) / meta.transform.a
        assert np.allclose(cols, np.round(cols))  # vertices on pixel corners


@pytest.mark.parametrize("block_rows", [37, 64, 300])
def test_strips_give_the_same_polygons_as_the_whole_array(tmp_path, block_rows):
    meta, mask = _load(BUILDINGS_MASK)
    kwargs = {"meta": meta, "class_names": ["background", "building"], "skip_classes": [0]}
    write_polygons(mask, tmp_path / "whole.gpkg", **kwargs)
    write_polygons(mask, tmp_path / "strips.gpkg", block_rows=block_rows, **kwargs)
    whole, strips = _features(tmp_path / "whole.gpkg")[1], _features(tmp_path / "strips.gpkg")[1]
    assert len(strips) == len(whole)
    assert sorted(a for *_, a, _ in strips) == pytest.approx(sorted(a for *_, a, _ in whole))
    assert sum(a for *_, a, _ in strips) == pytest.approx(mask.sum() * 0.25, rel=1e-9)


def test_multiclass_landcover_from_zarr_in_strips(tmp_path):
    meta, cover = _load(S2_LANDCOVER)
    z = zarr.create_array(store=str(tmp_path / "c.zarr"), shape=cover.shape, chunks=(128, 256), dtype="uint8")
    z[...] = cover
    kwargs = {"meta": meta, "class_names": LANDCOVER, "nodata": 0}
    n_whole = write_polygons(cover, tmp_path / "whole.gpkg", **kwargs)
    n_strips = write_polygons(z, tmp_path / "strips.gpkg", block_rows=100, **kwargs)
    assert n_whole == n_strips
    whole, strips = _features(tmp_path / "whole.gpkg")[1], _features(tmp_path / "strips.gpkg")[1]
    per_class_whole, per_class_strips = Counter(), Counter()
    for feats, counter in ((whole, per_class_whole), (strips, per_class_strips)):
        for cid, name, area, _ in feats:
            assert name == LANDCOVER[cid]
            counter[cid] += area
    pixel_area = 100.0  # 10 m S2 pixels
    expected = {c: float((cover == c).sum()) * pixel_area for c in range(1, 9) if (cover == c).any()}
    assert dict(per_class_whole) == pytest.approx(expected)
    assert dict(per_class_strips) == pytest.approx(expected)
    assert 0 not in per_class_whole  # nodata (unlabelled) makes no polygons


def test_min_area_and_background_polygons(tmp_path):
    meta, mask = _load(BUILDINGS_MASK)
    lab, n = ndimage.label(mask == 1)
    sizes = np.bincount(lab.ravel())[1:]
    dest = tmp_path / "big.gpkg"
    kwargs = {"meta": meta, "class_names": ["bg", "b"]}
    written = write_polygons(mask, dest, skip_classes=[0], min_area_px=200, **kwargs)
    assert written == int((sizes >= 200).sum()) < n
    assert all(area >= 200 * 0.25 for *_, area, _ in _features(dest)[1])
    with_bg = write_polygons(mask, tmp_path / "all.gpkg", block_rows=128, **kwargs)
    _, feats = _features(tmp_path / "all.gpkg")
    assert with_bg == len(feats) > n and {c for c, *_ in feats} == {0, 1}
    assert sum(a for *_, a, _ in feats) == pytest.approx(900 * 900 * 0.25)


def test_existing_output_is_protected(tmp_path):
    meta, mask = _load(BUILDINGS_MASK)
    dest = tmp_path / "b.gpkg"
    write_polygons(mask, dest, meta=meta, class_names=["bg", "b"], skip_classes=[0])
    before = dest.read_bytes()
    with pytest.raises(OutputError, match="exists"):
        write_polygons(mask, dest, meta=meta, class_names=["bg", "b"])
    assert dest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.gpkg"]


def test_strips_on_other_processes_write_the_same_features_in_the_same_order(tmp_path):
    """The strips and the joined regions run on spawned processes (a Zarr array travels as its path);
    the union-find and the writing stay in order, so the features are the serial run's, one by one."""
    from pipeline.execution.mappers import ProcessMap

    meta, cover = _load(S2_LANDCOVER)
    z = zarr.create_array(store=str(tmp_path / "c.zarr"), shape=cover.shape, chunks=(128, 256), dtype="uint8")
    z[...] = cover
    kwargs = {"meta": meta, "class_names": LANDCOVER, "nodata": 0, "block_rows": 70}
    serial = write_polygons(z, tmp_path / "serial.gpkg", **kwargs)
    pool = ProcessMap(2)
    try:
        parallel = write_polygons(z, tmp_path / "parallel.gpkg", mapper=pool, **kwargs)
        assert pool._pool is not None  # the strips really went to the pool
    finally:
        pool.close()
    assert serial == parallel > 100
    assert _features(tmp_path / "serial.gpkg") == _features(tmp_path / "parallel.gpkg")
