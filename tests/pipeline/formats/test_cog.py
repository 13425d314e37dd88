"""Label and probability COGs on the grids of the real sample rasters: valid, exact, QGIS-ready, atomic."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import zarr
from affine import Affine
from rio_cogeo.cogeo import cog_validate

from pipeline.core.box import Box
from pipeline.errors import ConfigError, InputError, OutputError
from pipeline.formats.cog import write_cog_labels, write_cog_probabilities
from pipeline.formats.geotiff import open_geotiff
from tests.pipeline.formats.sample_data import (
    PAN_ATLANTA,
    PAN_VEGAS_4326,
    RGB_BYTE,
    RGB_TENTH,
    S2_STACK,
    requires_data,
)

pytestmark = requires_data

NAMES = ["background", "bright", "brightest"]
COLORS = [(20, 20, 20), (230, 30, 40), (250, 220, 10)]
CLASSES = {"class_names": NAMES, "class_colors": COLORS}


def _derived_labels(path: Path) -> tuple[object, np.ndarray]:
    """Three classes from band-1 percentiles; nodata (255) where the input has none."""
    scene = open_geotiff(str(path))
    box = Box.from_shape(scene.spatial_shape)
    band = scene.read(box)[0].astype(np.float64)
    invalid = scene.read_nodata(box)
    invalid = np.zeros(band.shape, bool) if invalid is None else invalid
    p50, p90 = np.percentile(band[~invalid], [50, 90])
    labels = (band > p50).astype(np.uint8) + (band > p90)
    labels[invalid] = 255
    return scene, labels


def _to_zarr(array: np.ndarray, where: Path) -> zarr.Array:
    z = zarr.create_array(store=str(where), shape=array.shape, chunks=(256, 256), dtype=array.dtype)
    z[...] = array
    return z


def _pam_classes(cog: Path, tmp: Path) -> tuple[list[str], list[list[str]]]:
    """Category names and RAT rows as GDAL itself reads them (copied into a VRT, whose XML we parse)."""
    vrt = tmp / "probe.vrt"
    rasterio.shutil.copy(cog, vrt, driver="VRT")
    band = ET.parse(vrt).getroot().find("VRTRasterBand")
    names = [c.text or "" for c in band.find("CategoryNames")]
    rat = band.find("GDALRasterAttributeTable")
    rows = [[f.text or "" for f in row.findall("F")] for row in rat.findall("Row")]
    vrt.unlink()
    return names, rows


@pytest.mark.parametrize(
    "source", [RGB_BYTE, PAN_ATLANTA, PAN_VEGAS_4326, S2_STACK], ids=["rgb", "pan", "epsg4326", "s2"]
)
def test_label_cog_is_valid_exact_and_labelled(tmp_path, source):
    scene, labels = _derived_labels(source)
    dest = tmp_path / "out" / "labels.tif"
    write_cog_labels(
        _to_zarr(labels, tmp_path / "labels.zarr"),
        dest,
        meta=scene.meta,
        class_names=NAMES,
        class_colors=COLORS,
        block_rows=300,
    )
    is_valid, errors, _warnings = cog_validate(str(dest))
    assert is_valid and not errors
    with rasterio.open(dest) as cog, rasterio.open(source) as src:
        assert cog.crs == src.crs and cog.transform == src.transform  # exact, not approximate
        assert (cog.height, cog.width, cog.count, cog.dtypes[0]) == (src.height, src.width, 1, "uint8")
        assert cog.nodata == 255
        assert cog.block_shapes[0] == (512, 512)
        np.testing.assert_array_equal(cog.read(1), labels)
        cmap = cog.colormap(1)
        assert [cmap[i] for i in range(3)] == [(*c, 255) for c in COLORS]
        assert cmap[255][3] == 0  # nodata is transparent
        assert json.loads(cog.tags()["CLASS_NAMES"]) == NAMES
        assert cog.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
        assert cog.overviews(1), "expected at least one overview level"
    with rasterio.open(dest, overview_level=0) as ovr:
        assert set(np.unique(ovr.read(1)).tolist()) <= {0, 1, 2, 255}
    names, rows = _pam_classes(dest, tmp_path)
    assert names == NAMES
    assert rows == [[str(i), n, *map(str, c)] for i, (n, c) in enumerate(zip(NAMES, COLORS, strict=True))]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["labels.qml", "labels.tif", "labels.tif.aux.xml"]
    entries = ET.parse(dest.with_suffix(".qml")).getroot().iter("paletteEntry")
    assert [(e.get("value"), e.get("label")) for e in entries] == [(str(i), n) for i, n in enumerate(NAMES)]


def test_overviews_use_mode(tmp_path):
    """Each 2x2 block holds three 3s and one 0, at a different corner per quadrant: MODE gives 3
    everywhere, AVERAGE gives 2, NEAREST gives 0 in at least one quadrant."""
    scene = open_geotiff(str(PAN_ATLANTA))
    labels = np.full((900, 900), 3, np.uint8)
    for qi, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        r0, c0 = (qi // 2) * 450, (qi % 2) * 450
        labels[r0 + dy : r0 + 450 : 2, c0 + dx : c0 + 450 : 2] = 0
    dest = tmp_path / "mode.tif"
    write_cog_labels(labels, dest, meta=scene.meta, class_names=list("abcd"), class_colors=[(0, 0, 0)] * 4)
    with rasterio.open(dest, overview_level=0) as ovr:
        assert ovr.shape == (450, 450)
        assert (ovr.read(1) == 3).all()


def test_cog_bytes_do_not_depend_on_gdal_threads(tmp_path, monkeypatch):
    """Resumed and distributed runs compare outputs byte for byte; threaded compression must not
    change them."""
    from pipeline.formats import cog

    scene, labels = _derived_labels(PAN_ATLANTA)
    written = []
    for threads in ("1", "3", "ALL_CPUS"):
        monkeypatch.setattr(cog, "COPY_THREADS", threads)
        dest = tmp_path / f"labels-{threads}.tif"
        write_cog_labels(labels, dest, meta=scene.meta, block_rows=200, **CLASSES)
        written.append(dest.read_bytes())
    assert cog_validate(str(dest))[0]
    assert written[0] == written[1] == written[2]


def test_labels_are_streamed_in_row_strips(tmp_path):
    scene, labels = _derived_labels(PAN_VEGAS_4326)
    reads: list[tuple[int, int]] = []

    class Recorder:
        shape = labels.shape

        def __getitem__(self, key):
            rows = key[0] if isinstance(key, tuple) else key
            reads.append((rows.start, rows.stop))
            return labels[key]

    write_cog_labels(Recorder(), tmp_path / "l.tif", meta=scene.meta, block_rows=256, **CLASSES)
    assert reads == [(r, min(r + 256, 1300)) for r in range(0, 1300, 256)]


def test_rotated_transform_survives(tmp_path):
    with rasterio.open(RGB_TENTH) as src:
        profile, data, t = src.profile, src.read(), src.transform
    rotated = Affine.rotation(-20.0, pivot=(t.c, t.f)) @ t
    profile.update(transform=rotated)
    with rasterio.open(tmp_path / "rot.tif", "w", **profile) as dst:
        dst.write(data)
    scene = open_geotiff(str(tmp_path / "rot.tif"))
    labels = (data[0] > 60).astype(np.uint8)
    write_cog_labels(labels, tmp_path / "l.tif", meta=scene.meta, class_names=NAMES, class_colors=COLORS)
    with rasterio.open(tmp_path / "l.tif") as cog:
        assert cog.transform == scene.meta.transform and cog.crs == scene.meta.crs
    assert cog_validate(str(tmp_path / "l.tif"))[0]


def test_existing_dest_is_kept_without_overwrite(tmp_path):
    scene, labels = _derived_labels(RGB_BYTE)
    dest = tmp_path / "labels.tif"
    write_cog_labels(labels, dest, meta=scene.meta, class_names=NAMES, class_colors=COLORS)
    before = dest.read_bytes()
    with pytest.raises(OutputError, match="exists"):
        write_cog_labels(labels * 0, dest, meta=scene.meta, class_names=NAMES, class_colors=COLORS)
    assert dest.read_bytes() == before
    one = {"class_names": ["o"], "class_colors": [(1, 2, 3)]}
    write_cog_labels(labels * 0, dest, meta=scene.meta, overwrite=True, **one)
    with rasterio.open(dest) as cog:
        assert cog.read(1).max() == 0 and json.loads(cog.tags()["CLASS_NAMES"]) == ["o"]
    assert _pam_classes(dest, tmp_path)[0] == ["o"]  # the sidecar was replaced along with the COG


@pytest.mark.parametrize("existing", [False, True])
def test_failure_mid_write_leaves_nothing_behind(tmp_path, existing):
    scene, labels = _derived_labels(PAN_ATLANTA)
    dest = tmp_path / "labels.tif"
    if existing:
        write_cog_labels(labels, dest, meta=scene.meta, class_names=NAMES, class_colors=COLORS)
    before = sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir())

    class Exploding:
        shape = labels.shape

        def __getitem__(self, key):
            if key.start >= 400:
                raise RuntimeError("worker lost")
            return labels[key]

    with pytest.raises(RuntimeError, match="worker lost"):
        write_cog_labels(Exploding(), dest, meta=scene.meta, block_rows=200, overwrite=True, **CLASSES)
    assert sorted((p.name, p.read_bytes()) for p in tmp_path.iterdir()) == before


def test_bad_arguments_are_reported(tmp_path):
    scene, labels = _derived_labels(RGB_TENTH)
    dest = tmp_path / "x.tif"
    with pytest.raises(ConfigError, match="nodata"):
        write_cog_labels(labels, dest, meta=scene.meta, class_names=NAMES, class_colors=COLORS, nodata=1)
    with pytest.raises(ConfigError, match="colours"):
        write_cog_labels(labels, dest, meta=scene.meta, class_names=NAMES, class_colors=COLORS[:2])
    with pytest.raises(InputError, match=r"\(H, W\)"):
        write_cog_labels(labels[None], dest, meta=scene.meta, class_names=NAMES, class_colors=COLORS)
    with pytest.raises(InputError, match="uint8"):
        write_cog_labels(labels.astype(np.float32), dest, meta=scene.meta, **CLASSES)
    with pytest.raises(InputError, match=r"0\.\.255"):
        write_cog_labels(labels.astype(np.int32) - 1, dest, meta=scene.meta, **CLASSES)
    assert list(tmp_path.iterdir()) == []


def test_probability_cog(tmp_path):
    scene, labels = _derived_labels(S2_STACK)
    probs = np.stack([(labels == k) * 200 + 20 for k in range(3)]).astype(np.uint8)
    dest = tmp_path / "probs.tif"
    write_cog_probabilities(_to_zarr_3d(probs, tmp_path / "p.zarr"), dest, meta=scene.meta, class_names=NAMES)
    assert cog_validate(str(dest))[0]
    with rasterio.open(dest) as cog, rasterio.open(S2_STACK) as src:
        assert cog.crs == src.crs and cog.transform == src.transform
        assert cog.count == 3 and cog.descriptions == tuple(NAMES)
        assert cog.scales == pytest.approx((1 / 255,) * 3)
        assert json.loads(cog.tags()["CLASS_NAMES"]) == NAMES
        assert cog.overviews(1)
        np.testing.assert_array_equal(cog.read(), probs)
    with rasterio.open(dest, overview_level=0) as ovr:
        assert set(np.unique(ovr.read()).tolist()) - {20, 220}, "AVERAGE overviews blend values at edges"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr", "probs.tif"]

    floats = probs.astype(np.float32) / 255.0
    write_cog_probabilities(floats, tmp_path / "f.tif", meta=scene.meta, class_names=NAMES)
    with rasterio.open(tmp_path / "f.tif") as cog:
        np.testing.assert_array_equal(cog.read(), probs)
    with pytest.raises(ConfigError, match="3 probability bands for 2"):
        write_cog_probabilities(probs, tmp_path / "g.tif", meta=scene.meta, class_names=NAMES[:2])


def _to_zarr_3d(array: np.ndarray, where: Path) -> zarr.Array:
    z = zarr.create_array(store=str(where), shape=array.shape, chunks=(1, 256, 256), dtype=array.dtype)
    z[...] = array
    return z
