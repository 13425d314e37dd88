"""MODE overview levels computed tile by tile equal the levels GDAL's COG driver builds itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.formats.cog import write_cog_labels
from pipeline.formats.geotiff import open_geotiff
from pipeline.formats.overviews import level_shapes, mode_tile, source_span
from tests.pipeline.formats.sample_data import PAN_VEGAS_4326, RGB_BYTE, S2_LANDCOVER, requires_data

pytestmark = requires_data

NAMES = [f"c{i}" for i in range(12)]
COLORS = [(i * 20, 255 - i * 20, 128) for i in range(12)]


def _gdal_levels(labels: np.ndarray, meta, tmp: Path) -> list[np.ndarray]:
    dest = tmp / "gdal.tif"
    write_cog_labels(labels, dest, meta=meta, class_names=NAMES, class_colors=COLORS, overwrite=True)
    with rasterio.open(dest) as ds:
        n = len(ds.overviews(1))
    out = []
    for i in range(n):
        with rasterio.open(dest, overview_level=i) as ds:
            out.append(ds.read(1))
    return out


def _tiled_levels(labels: np.ndarray, tile: tuple[int, int], nodata: int | None = 255) -> list[np.ndarray]:
    """Every level built from the one below, in tiles of ``tile`` destination pixels."""
    prev, levels = labels, []
    for shape in level_shapes(labels.shape):
        out = np.empty(shape, np.uint8)
        for y0 in range(0, shape[0], tile[0]):
            for x0 in range(0, shape[1], tile[1]):
                y1, x1 = min(shape[0], y0 + tile[0]), min(shape[1], x0 + tile[1])
                ya, yb = source_span(prev.shape[0], shape[0], y0, y1)
                xa, xb = source_span(prev.shape[1], shape[1], x0, x1)
                box = (y0, y1, x0, x1)
                out[y0:y1, x0:x1] = mode_tile(prev[ya:yb, xa:xb], (ya, xa), prev.shape, shape, box, nodata)
        levels.append(out)
        prev = out
    return levels


def _landcover() -> tuple[np.ndarray, object]:
    scene = open_geotiff(str(S2_LANDCOVER))
    with rasterio.open(S2_LANDCOVER) as ds:
        labels = ds.read(1)
    labels = np.where(labels == (ds.nodata if ds.nodata is not None else 255), 255, labels).astype(np.uint8)
    labels[100:180, 300:420] = 255  # a nodata hole: MODE skips nodata, all-nodata windows stay nodata
    return labels, scene.meta


@pytest.mark.parametrize("tile", [(1024, 1024), (97, 131), (64, 512)])
def test_real_land_cover_levels_equal_gdal_for_any_tiling(tmp_path, tile):
    labels, meta = _landcover()
    gdal = _gdal_levels(labels, meta, tmp_path)
    assert [g.shape for g in gdal] == level_shapes(labels.shape) == [(384, 768), (192, 384)]
    ours = _tiled_levels(labels, tile)
    assert all((a == b).all() for a, b in zip(ours, gdal, strict=True))


def test_ties_resolve_as_gdal_does(tmp_path):
    """Random classes with 2x2 ties everywhere: the winner is the value that first takes the lead in
    raster order (not the smallest, not the first seen)."""
    meta = open_geotiff(str(PAN_VEGAS_4326)).meta
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 4, (1300, 1300)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.25] = 255
    gdal = _gdal_levels(labels, meta, tmp_path)
    assert [g.shape for g in gdal] == [(650, 650), (325, 325)]
    ours = _tiled_levels(labels, (200, 300))
    assert all((a == b).all() for a, b in zip(ours, gdal, strict=True))


def test_odd_sizes_shapes_match_gdal_and_tiles_do_not_matter(tmp_path):
    """With an odd size some windows are 3 pixels wide; the level shapes are still GDAL's, and any
    tiling gives the same level (GDAL itself cuts such windows at its processing-chunk borders, which
    is why the job lets GDAL build those levels: see ``pipeline.execution.pyramid.halves_exactly``)."""
    meta = open_geotiff(str(RGB_BYTE)).meta
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, (2051, 1543)).astype(np.uint8)
    gdal = _gdal_levels(labels, meta, tmp_path)
    assert [g.shape for g in gdal] == level_shapes(labels.shape)
    whole = _tiled_levels(labels, (4096, 4096))
    for tile in [(113, 77), (512, 1000)]:
        assert all((a == b).all() for a, b in zip(_tiled_levels(labels, tile), whole, strict=True))
    first = gdal[0][:1000]  # GDAL's first processing chunk: no cut windows there
    assert (whole[0][:1000] == first).all()


def test_without_nodata_every_value_counts():
    window = np.array([[255, 255], [1, 7]], dtype=np.uint8)
    assert mode_tile(window, (0, 0), (2, 2), (1, 1), (0, 1, 0, 1), None)[0, 0] == 255
    assert mode_tile(window, (0, 0), (2, 2), (1, 1), (0, 1, 0, 1), 255)[0, 0] == 1
    empty = np.full((2, 2), 255, np.uint8)
    assert mode_tile(empty, (0, 0), (2, 2), (1, 1), (0, 1, 0, 1), 255)[0, 0] == 255
