"""COGs assembled from the work store (GDAL reading its Zarr, overview levels built tile-wise on many
threads) are byte for byte the COGs the streamed, GDAL-built path writes, for any chunking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from pipeline.execution.mappers import thread_map
from pipeline.execution.pyramid import build_label_pyramid, halves_exactly, level_sources
from pipeline.execution.workstore import gdal_name, gdal_zarr
from pipeline.formats.cog import write_cog_labels, write_cog_probabilities
from pipeline.formats.geotiff import open_geotiff
from tests.pipeline.formats.sample_data import PAN_VEGAS_4326, RGB_BYTE, S2_LANDCOVER, requires_data

pytestmark = requires_data

NAMES = ["background", "bright", "brightest"]
COLORS = [(20, 20, 20), (230, 30, 40), (250, 220, 10)]


def _labels(path: Path) -> tuple[np.ndarray, object]:
    """Three classes from band-1 percentiles of a real raster, a nodata corner."""
    with rasterio.open(path) as ds:
        band = ds.read(1).astype(np.float64)
    p50, p90 = np.percentile(band, [50, 90])
    labels = (band > p50).astype(np.uint8) + (band > p90)
    labels[:40, :70] = 255
    return labels, open_geotiff(str(path)).meta


def _serial(fn, items):
    return [fn(i) for i in items]


@pytest.mark.parametrize("path", [PAN_VEGAS_4326, RGB_BYTE], ids=["halves-exactly", "odd-size"])
def test_labels_cog_from_the_work_store_is_the_streamed_cog(tmp_path, path):
    labels, meta = _labels(path)
    kw = {"meta": meta, "class_names": NAMES, "class_colors": COLORS, "tags": {"TILEWISE_MODEL": "m"}}
    write_cog_labels(labels, tmp_path / "streamed.tif", **kw)
    expect = (tmp_path / "streamed.tif").read_bytes()
    for i, (chunks, mapper) in enumerate([((300, 420), thread_map(3)), ((512, 512), _serial)]):
        store = gdal_zarr(labels.shape, chunks, tmp_path / f"labels{i}.zarr")
        store[...] = labels
        sources = {}
        if halves_exactly(labels.shape):
            levels = build_label_pyramid(store, tmp_path / f"ov{i}", 255, mapper)
            sources["overview_sources"] = level_sources(levels)
        dest = tmp_path / f"store{i}.tif"
        write_cog_labels(store, dest, gdal_source=gdal_name(store), **sources, **kw)
        assert dest.read_bytes() == expect, chunks
        assert (
            dest.with_name(dest.name + ".aux.xml").read_text()
            == (tmp_path / "streamed.tif.aux.xml").read_text()
        )
        assert cog_validate(str(dest))[0]
    assert halves_exactly(labels.shape) == (path == PAN_VEGAS_4326)


def test_real_land_cover_cog_from_the_work_store(tmp_path):
    with rasterio.open(S2_LANDCOVER) as ds:
        labels = ds.read(1)
    meta = open_geotiff(str(S2_LANDCOVER)).meta
    names = [f"c{i}" for i in range(int(labels[labels != 255].max()) + 1)]
    kw = {"meta": meta, "class_names": names, "class_colors": [(i, i, i) for i in range(len(names))]}
    write_cog_labels(labels, tmp_path / "streamed.tif", **kw)
    store = gdal_zarr(labels.shape, (256, 384), tmp_path / "labels.zarr")
    store[...] = labels
    levels = build_label_pyramid(store, tmp_path / "ov", 255)
    sources = {"gdal_source": gdal_name(store), "overview_sources": level_sources(levels)}
    write_cog_labels(store, tmp_path / "store.tif", **sources, **kw)
    assert (tmp_path / "store.tif").read_bytes() == (tmp_path / "streamed.tif").read_bytes()


def test_probability_cog_from_the_work_store_is_the_streamed_cog(tmp_path):
    meta = open_geotiff(str(RGB_BYTE)).meta
    with rasterio.open(RGB_BYTE) as ds:
        probs = ds.read()  # three smooth uint8 planes on an odd-sized grid
    kw = {"meta": meta, "class_names": NAMES, "tags": {"TILEWISE_MODEL": "m"}}
    write_cog_probabilities(probs, tmp_path / "streamed.tif", **kw)
    store = gdal_zarr(probs.shape, (3, 200, 333), tmp_path / "probs.zarr")
    store[...] = probs
    write_cog_probabilities(store, tmp_path / "store.tif", gdal_source=gdal_name(store), **kw)
    assert (tmp_path / "store.tif").read_bytes() == (tmp_path / "streamed.tif").read_bytes()
    assert cog_validate(str(tmp_path / "store.tif"))[0]


def test_only_local_zarr_v2_arrays_are_handed_to_gdal(tmp_path):
    import zarr

    v3 = zarr.create_array(store=str(tmp_path / "v3.zarr"), shape=(4, 4), dtype="uint8")
    v2 = gdal_zarr((4, 4), (4, 4), tmp_path / "v2.zarr")
    assert gdal_name(v3) is None and gdal_name(np.zeros((4, 4))) is None
    assert gdal_name(v2) == f'ZARR:"{tmp_path / "v2.zarr"}"'


def test_probability_levels_built_tile_wise_are_gdals_average(tmp_path):
    """1300² halves exactly: the AVERAGE levels are built tile by tile ((sum + 2) // 4, cascaded) and
    the COG is byte for byte the one GDAL builds from the streamed rows."""
    with rasterio.open(PAN_VEGAS_4326) as ds:
        band = ds.read(1).astype(np.float64)
    scaled = np.clip(band / np.percentile(band, 99) * 255, 0, 255).astype(np.uint8)
    probs = np.stack([scaled, 255 - scaled, scaled[::-1]])  # real texture: gradients, edges, flats
    kw = {"meta": open_geotiff(str(PAN_VEGAS_4326)).meta, "class_names": NAMES}
    write_cog_probabilities(probs, tmp_path / "streamed.tif", **kw)
    store = gdal_zarr(probs.shape, (3, 256, 384), tmp_path / "probs.zarr")
    store[...] = probs
    levels = build_label_pyramid(store, tmp_path / "ov", None, thread_map(2))
    assert len(levels) == 2
    sources = {"gdal_source": gdal_name(store), "overview_sources": level_sources(levels)}
    write_cog_probabilities(store, tmp_path / "store.tif", **sources, **kw)
    assert (tmp_path / "store.tif").read_bytes() == (tmp_path / "streamed.tif").read_bytes()


def test_four_probability_bands_have_no_alpha_band(tmp_path):
    """A new 4-band GTiff makes band 4 alpha; a probability COG must not (readers would hide pixels
    where class 3 has probability 0, and GDAL's AVERAGE levels zeroed every band there). Both paths
    write the same file and plain averages."""
    with rasterio.open(PAN_VEGAS_4326) as ds:
        band = ds.read(1).astype(np.float64)
    p = np.clip(band / np.percentile(band, 99) * 255, 0, 255).astype(np.uint8)
    probs = np.stack([p, 255 - p, p[::-1], np.where(p > 128, 0, p)])  # class 3: zero in places
    kw = {"meta": open_geotiff(str(PAN_VEGAS_4326)).meta, "class_names": [*NAMES, "fourth"]}
    write_cog_probabilities(probs, tmp_path / "streamed.tif", **kw)
    store = gdal_zarr(probs.shape, (4, 512, 512), tmp_path / "probs.zarr")
    store[...] = probs
    sources = {"gdal_source": gdal_name(store)}
    sources["overview_sources"] = level_sources(build_label_pyramid(store, tmp_path / "ov", None))
    write_cog_probabilities(store, tmp_path / "store.tif", **sources, **kw)
    assert (tmp_path / "store.tif").read_bytes() == (tmp_path / "streamed.tif").read_bytes()
    with rasterio.open(tmp_path / "streamed.tif") as ds:
        assert "alpha" not in [c.name for c in ds.colorinterp]
    with rasterio.open(tmp_path / "streamed.tif", overview_level=0) as ds:
        level = ds.read().astype(np.int32)
    s = probs.astype(np.int32)
    expect = (s[:, 0::2, 0::2] + s[:, 0::2, 1::2] + s[:, 1::2, 0::2] + s[:, 1::2, 1::2] + 2) // 4
    assert np.array_equal(level, expect)
