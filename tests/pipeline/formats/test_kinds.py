"""The file-kind registry: which reader owns a name, the scene stem, and each output's suffix."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import ConfigError
from pipeline.formats.kinds import (
    GDAL_SUFFIXES,
    KINDS,
    NIFTI_SUFFIXES,
    OUTPUT_SUFFIX,
    ZARR_SUFFIXES,
    is_gdal_raster,
    kind_of,
    output_suffix,
    strip_scene_suffix,
)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("ct.nii.gz", "nifti"),
        ("CT.NII.GZ", "nifti"),
        ("brain.nii", "nifti"),
        ("case_0001.nii.gz", "nifti"),
        ("s3://bucket/a/ct.nii.gz", "nifti"),
        ("https://h/ct.nii.gz?X-Amz-Signature=abc", "nifti"),
        ("vol.zarr", "zarr"),
        ("vol.zarr/", "zarr"),
        ("Vol.ZARR//", "zarr"),
        ("img.ome.zarr", "zarr"),
        ("s3://bucket/img.ome.zarr/", "zarr"),
        ("a.tif", "geotiff"),
        ("B.TIFF", "geotiff"),
        ("m.vrt", "geotiff"),
        ("x.img", "geotiff"),
        ("y.jp2", "geotiff"),
        ("dem.hgt", "geotiff"),
        ("x.gtiff", "geotiff"),
        ("s3://b/k.tif?v=1", "geotiff"),
        ("scan.gz", None),
        ("archive.tar.gz", None),
        ("notes.nii.txt", None),
        ("c.png", None),
        ("d.gpkg", None),
        ("readme", None),
        ("zarr", None),
        ("tif", None),
        ("a.tif.aux.xml", None),
        ("x.zarr/0/0", None),
        ("", None),
    ],
)
def test_kind_of(name: str, kind: str | None) -> None:
    assert kind_of(name) == kind
    assert is_gdal_raster(name) == (kind == "geotiff")


@given(
    stem=st.from_regex(r"[A-Za-z0-9_-]{0,12}", fullmatch=True),
    suffix=st.sampled_from(NIFTI_SUFFIXES + ZARR_SUFFIXES + GDAL_SUFFIXES),
    upper=st.booleans(),
    query=st.sampled_from(["", "?v=1", "?X-Amz-Signature=a%2Fb&x=.nii"]),
)
def test_every_registered_suffix_names_its_kind(stem: str, suffix: str, upper: bool, query: str) -> None:
    want = "nifti" if suffix in NIFTI_SUFFIXES else "zarr" if suffix in ZARR_SUFFIXES else "geotiff"
    ext = suffix.upper() if upper else suffix
    assert kind_of(f"{stem}{ext}") == want
    assert kind_of(f"s3://bucket/dir/{stem}{ext}{query}") == want
    assert strip_scene_suffix(f"{stem}{ext}") == stem


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("CT.NII.GZ", "CT"),
        ("brain.nii", "brain"),
        ("img.ome.zarr", "img"),
        ("vol.zarr", "vol"),
        ("x.gtiff", "x"),
        ("x.tiff", "x"),
        ("a.b.tif", "a.b"),
        ("plain", "plain"),
        ("scan.gz", "scan.gz"),
    ],
)
def test_strip_scene_suffix_keeps_case_and_takes_the_longest(name: str, stem: str) -> None:
    assert strip_scene_suffix(name) == stem


def test_a_json_file_is_a_stac_item_input_not_an_output_format() -> None:
    assert kind_of("s3://bkt/S2A_T33UUU/item.JSON") == "stac" and strip_scene_suffix("item.json") == "item"
    with pytest.raises(ConfigError):
        output_suffix("stac")


def test_output_suffixes_are_what_the_readers_read_back() -> None:
    assert set(OUTPUT_SUFFIX) == set(KINDS)
    assert output_suffix("geotiff") == ".tif" and output_suffix("nifti") == ".nii.gz"
    assert output_suffix("zarr") == ".zarr"
    for kind in KINDS:
        assert kind_of(f"out_labels{output_suffix(kind)}") == kind
    with pytest.raises(ConfigError, match="png"):
        output_suffix("png")
