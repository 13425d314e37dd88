"""Paths of the real sample data (../shared/data, see its MANIFEST.md); tests fail if it is absent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import DATA

GEO = DATA / "geo"
RGB_BYTE = GEO / "rasterio" / "RGB.byte.tif"
RGB_TENTH = GEO / "rasterio" / "rgb-byte-tenth.tif"
PAN_ATLANTA = GEO / "solaris" / "sample_geotiff.tif"
PAN_VEGAS_4326 = GEO / "solaris" / "road_mask_input.tif"
MS1_FLOAT = GEO / "solaris" / "ms1.tif"
S2_STACK = GEO / "derived" / "S2A_T33UUU_20170216_L1C_B02-B03-B04-B08_10m.tif"
S2_LANDCOVER = GEO / "derived" / "S2A_T33UUU_20170216_osm_landcover_10m.tif"
BUILDINGS_MASK = GEO / "derived" / "sample_geotiff_buildings_mask.tif"
MNI_T1 = DATA / "medical" / "nilearn" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MNI_GM = DATA / "medical" / "nilearn" / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"


def need(*paths: Path) -> None:
    """Fail the calling test, naming the files, when sample data is missing (a clone without ../shared)."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.fail(f"sample data missing: {', '.join(missing)}")


requires_data = pytest.mark.usefixtures("data")  # the conftest fixture fails when the data is missing


def read_window(path: Path, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """``(C, h, w)`` pixels of a sample raster over a window, in the file's dtype."""
    import rasterio

    need(path)
    with rasterio.open(path) as ds:
        return ds.read(window=(rows, cols))


TOTALSEG = DATA / "medical" / "totalsegmentator"
CT, CT_SEG = TOTALSEG / "example_ct_sm.nii.gz", TOTALSEG / "example_seg.nii.gz"
MR, MR_SEG = TOTALSEG / "example_mr_sm.nii.gz", TOTALSEG / "example_seg_mr.nii.gz"


def whole(scene: Any, fill: float = 0.0) -> np.ndarray:
    """A scene's every pixel or voxel, ``(C, *spatial)``, read through its own reader."""
    from pipeline.core.box import Box

    return scene.read(Box.from_shape(scene.spatial_shape), fill)


def raw(path: Path) -> np.ndarray:
    """A NIfTI file's stored voxels, as nibabel gives them (file order, no scaling)."""
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj)


def to_ras(path: Path) -> np.ndarray:
    """A NIfTI file's voxels reoriented to RAS by nibabel: the reference a reader is held to."""
    import nibabel as nib
    from nibabel import orientations as nio

    img = nib.load(path)
    tr = nio.ornt_transform(nio.io_orientation(img.affine), nio.axcodes2ornt("RAS"))
    return nio.apply_orientation(np.asarray(img.dataobj), tr)


def save_like(data: np.ndarray, like: Path, dest: Path, **kw: Any) -> Path:
    """``data`` saved as NIfTI under ``like``'s affine and header."""
    import nibabel as nib

    src = nib.load(like)
    nib.save(nib.Nifti1Image(data, src.affine, src.header.copy(), **kw), dest)
    return dest
