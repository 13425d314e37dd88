"""Zarr writers with real labels (TotalSegmentator) and a real CRS (Landsat), read back by ome-zarr."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import zarr

from pipeline.core.box import Box
from pipeline.errors import ConfigError, InputError, OutputError
from pipeline.formats.colours import default_color, parse_color
from pipeline.formats.scene import GeoMeta
from pipeline.formats.zarr_reader import open_zarr
from pipeline.formats.zarr_writer import write_geo_zarr, write_ome_zarr_labels
from tests.pipeline.formats.sample_data import CT_SEG, RGB_BYTE, need, whole


@pytest.mark.parametrize("ngff", ["0.5", "0.4"])
def test_ome_zarr_labels_from_real_ct_labels(tmp_path: Path, ngff: str) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    need(CT_SEG)
    seg = np.asarray(nib.load(CT_SEG).dataobj)  # (X, Y, Z) = (122, 101, 30), 3 mm
    names = [f"class_{i}" for i in range(int(seg.max()) + 1)]
    names[:2] = ["background", "spleen"]
    colors = ["#00000000", "#ff0000"]
    source = zarr.create_array(
        store=str(tmp_path / "src.zarr"), shape=seg.shape, dtype=seg.dtype, chunks=(32, 32, 8)
    )
    source[:] = seg  # a zarr input is copied through dask, chunk by chunk
    for name, labels in (("np", seg), ("zr", source)):
        dest = tmp_path / f"{name}.ome.zarr"
        write_ome_zarr_labels(
            labels,
            dest,
            image_name="organs",
            class_names=names,
            class_colors=colors,
            spacing=(3.0, 3.0, 3.0),
            axes="xyz",
            unit="millimeter",
            chunks=(32, 32, 16),
            ngff_version=ngff,
        )
        nodes = list(Reader(parse_url(str(dest)))())
        assert len(nodes) == 1
        node = nodes[0]
        assert node.load(Label) is not None and node.load(Multiscales) is not None
        assert 2 <= len(node.data) <= 4
        assert np.array_equal(np.asarray(node.data[0]), seg.transpose(2, 1, 0))  # NGFF order z, y, x
        assert node.data[1].shape == (15, 50, 61)
        assert node.metadata["color"][1] == [1.0, 0.0, 0.0, 1.0]
        assert node.metadata["properties"][1]["class"] == "spleen"
        assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]
        scene = open_zarr(dest)
        assert scene.shape == (1, 30, 101, 122) and scene.meta.spacing == (3.0, 3.0, 3.0)
        assert np.array_equal(whole(scene)[0], seg.transpose(2, 1, 0))
        low = open_zarr(dest, level=1)
        assert low.shape == (1, 15, 50, 61) and low.meta.spacing[0] == pytest.approx(6.0)
        with pytest.raises(InputError, match="level"):
            open_zarr(dest, level=len(node.data))
    with pytest.raises(OutputError):
        write_ome_zarr_labels(seg, dest, class_names=names)
    write_ome_zarr_labels(seg[:, :, 0], dest, class_names=names, overwrite=True)
    assert open_zarr(dest).shape == (1, 122, 101)  # 2-D, axes y, x
    assert not [p for p in tmp_path.iterdir() if ".tw-tmp-" in p.name]


def test_geo_zarr_keeps_crs_and_transform_of_a_real_geotiff(tmp_path: Path) -> None:
    need(RGB_BYTE)
    import rasterio

    with rasterio.open(RGB_BYTE) as src:
        band = src.read(1)
        crs, transform = src.crs, src.transform
    labels = np.where(band == 0, 255, (band > 100).astype(np.uint8)).astype(np.uint8)
    band = zarr.create_array(
        store=str(tmp_path / "band.zarr"), shape=(1, *labels.shape), dtype="u1", chunks=(1, 100, 791)
    )
    band[0] = labels  # a (1, H, W) work store is copied band by band
    for fmt, source in ((2, labels), (3, band)):
        dest = tmp_path / f"geo{fmt}.zarr"
        write_geo_zarr(
            source,
            dest,
            meta=GeoMeta(crs=crs, transform=transform),
            class_names=["dark", "bright"],
            class_colors=["#000000", "#ffffff"],
            chunks=(256, 256),
            zarr_format=fmt,
        )
        s = open_zarr(dest)
        assert s.shape == (1, 718, 791) and s.dtype == np.uint8
        assert s.meta.crs == crs and s.meta.transform == transform
        assert s.meta.gsd == pytest.approx((abs(transform.e), transform.a))
        assert s.meta.nodata == 255 and s.nodata == 255
        assert np.array_equal(whole(s)[0], labels)
        mask = s.read_nodata(Box((0, 0), (718, 791)))
        assert np.array_equal(mask, labels == 255)
        attrs = dict(zarr.open_array(store=str(dest), mode="r").attrs)
        assert attrs["_ARRAY_DIMENSIONS"] == ["y", "x"] and attrs["class_names"] == ["dark", "bright"]
        assert attrs["class_colors"][1] == [255, 255, 255, 255] and attrs["transform"] == list(
            transform.to_gdal()
        )


def test_labels_without_colours_get_the_shared_default_rule(tmp_path: Path) -> None:
    labels = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6) % 3
    dest = write_ome_zarr_labels(labels, tmp_path / "l.zarr", class_names=["bg", "a", "b"])
    label_meta = zarr.open_group(str(dest), mode="r").attrs["ome"]["image-label"]
    colors = {c["label-value"]: c["rgba"] for c in label_meta["colors"]}
    assert colors == {i: list(parse_color(None, index=i)) for i in range(3)}
    assert colors[0][3] == 0 and colors[1] == [*parse_color(default_color(1))[:3], 255]
    geo = write_geo_zarr(
        labels,
        tmp_path / "g.zarr",
        meta=GeoMeta(crs=None, transform=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0)),
        class_names=["bg", "a", "b"],
        class_colors=["#102030"],
    )
    attrs = dict(zarr.open_array(store=str(geo), mode="r").attrs)
    assert attrs["class_colors"] == [[16, 32, 48, 255], *(list(parse_color(None, index=i)) for i in (1, 2))]


def test_bad_labels_and_options_are_refused(tmp_path: Path) -> None:
    names, flat = ["bg", "a"], np.zeros((4, 4), np.uint8)
    with pytest.raises(InputError, match="integers"):
        write_ome_zarr_labels(np.zeros((4, 4), np.float32), tmp_path / "f.zarr", class_names=names)
    with pytest.raises(InputError, match="axes"):
        write_ome_zarr_labels(flat, tmp_path / "a.zarr", class_names=names, axes="xx")
    with pytest.raises(ConfigError, match="ngff_version"):
        write_ome_zarr_labels(flat, tmp_path / "v.zarr", class_names=names, ngff_version="0.3")
    with pytest.raises(ConfigError, match="colour"):
        write_ome_zarr_labels(flat, tmp_path / "c.zarr", class_names=names, class_colors=["nope"])
    meta = GeoMeta(crs=None, transform=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    with pytest.raises(InputError, match="2-D"):
        write_geo_zarr(np.zeros((2, 4, 4), np.uint8), tmp_path / "g.zarr", meta=meta, class_names=names)
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
