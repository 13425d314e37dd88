"""The one list of file kinds: which reader owns a path, and the suffix each output format writes.

Kinds are told by extension alone: discovery classifies thousands of object-store keys and folder
entries, and opening each one to sniff it would cost a request per key.
"""

from __future__ import annotations

import os

from pipeline.errors import ConfigError

GEOTIFF, NIFTI, ZARR, STAC = "geotiff", "nifti", "zarr", "stac"
KINDS = (GEOTIFF, NIFTI, ZARR)  # formats read and written
INPUT_KINDS = (*KINDS, STAC)  # a STAC Item is read (its assets as one scene), never written as labels

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ZARR_SUFFIXES = (".ome.zarr", ".zarr")
STAC_SUFFIXES = (".json",)  # a STAC Item; its assets are read as one raster scene
# Everything GDAL reads that this project treats as a raster scene; read by ``pipeline.formats.geotiff``.
GDAL_SUFFIXES = (
    *(".tif", ".tiff", ".gtif", ".gtiff", ".vrt", ".img", ".jp2", ".j2k", ".ecw", ".sid", ".ntf", ".nitf"),
    *(".hgt", ".dem", ".asc", ".bil", ".rst", ".dt2", ".kea"),
)
# Longest first, so ``.ome.zarr`` wins over ``.zarr`` and ``.gtiff`` over ``.tiff``.
SCENE_SUFFIXES = tuple(
    sorted(NIFTI_SUFFIXES + ZARR_SUFFIXES + GDAL_SUFFIXES + STAC_SUFFIXES, key=len, reverse=True)
)
OUTPUT_SUFFIX = {GEOTIFF: ".tif", NIFTI: ".nii.gz", ZARR: ".zarr"}


def _name(uri: str | os.PathLike[str]) -> str:
    """Lower-cased, without a query string (presigned URLs) or the trailing slash of a folder."""
    return os.fspath(uri).split("?", 1)[0].rstrip("/").lower()


def kind_of(uri: str | os.PathLike[str]) -> str | None:
    """The reader family (``geotiff``, ``nifti``, ``zarr``) for a path or URL; None if not a scene."""
    name = _name(uri)
    if name.endswith(NIFTI_SUFFIXES):
        return NIFTI
    if name.endswith(ZARR_SUFFIXES):
        return ZARR
    if name.endswith(GDAL_SUFFIXES):
        return GEOTIFF
    if name.endswith(STAC_SUFFIXES):
        return STAC
    return None


def is_gdal_raster(uri: str | os.PathLike[str]) -> bool:
    """True when the name is one the GDAL reader should own."""
    return kind_of(uri) == GEOTIFF


def strip_scene_suffix(name: str) -> str:
    """``name`` without its scene extension, case kept (``CT.NII.GZ`` -> ``CT``); as is if it has none."""
    lower = name.lower()
    for suffix in SCENE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def output_suffix(fmt: str) -> str:
    """The file suffix an output format writes (labels and probabilities alike)."""
    try:
        return OUTPUT_SUFFIX[fmt]
    except KeyError:
        raise ConfigError(f"unknown output format {fmt!r}; use one of {', '.join(OUTPUT_SUFFIX)}") from None
