"""The engine grid at a target spacing (pipeline/formats/nifti_grid.py), through the NIfTI reader on
the real volumes in ../shared/data/medical: tilewise's and MONAI's grid rules, and a kept axis. nnU-Net's
rule is held to nnU-Net's own resampling in test_spline.py."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.box import Box
from pipeline.errors import ConfigError
from pipeline.formats.nifti_grid import SpacingGrid
from pipeline.formats.nifti_reader import open_nifti
from pipeline.formats.spline import NnUNetResampling
from tests.pipeline.formats.sample_data import CT, CT_SEG, MR, MR_SEG, whole

pytestmark = pytest.mark.usefixtures("data")  # fails, never skips, when the real data is missing


def test_a_none_spacing_keeps_the_axis_and_an_unchanged_shape_is_no_grid() -> None:
    """``None`` keeps the file's spacing on its axis (a 2-D nnU-Net configuration's slices): that axis
    neither moves nor counts as resampled; a target the shape does not change for is the file's grid."""
    grid = SpacingGrid.build((122, 101, 30), (2.5, 2.2, 4.0), (3.0, 3.0, None), resampling=NnUNetResampling())
    assert grid is not None and grid.shape == (102, 74, 30) and grid.factor[2] == 1.0
    assert grid.spacing((2.5, 2.2, 4.0))[2] == 4.0 and grid.separate_axis is None
    assert SpacingGrid.build((122, 101, 30), (3.0, 3.0, 4.0), (3.0, 3.0, None)) is None
    assert SpacingGrid.build((122, 101, 30), (3.0, 3.0, 3.0), (3.0, 3.0, 3.04)) is None  # 29.6 voxels: 30
    s = open_nifti(CT, orientation="native", target_spacing=(6.0, None, None))
    assert s.resampled and s.spatial_shape == (61, 101, 30)
    assert s.meta.spacing == pytest.approx((6.0, 3.0, 3.0))
    full = open_nifti(CT, orientation="native", target_spacing=(6.0, 3.0, 3.0))
    np.testing.assert_array_equal(whole(s), whole(full))  # None is the file's own 3 mm
    assert s.to_native_scores(whole(s)).shape == (1, 122, 101, 30)
    with pytest.raises(ConfigError, match="spacing_grid"):
        open_nifti(CT, spacing_grid="nearest")
    with pytest.raises(ConfigError, match="has not 3 values"):
        open_nifti(CT, target_spacing=(3.0, 3.0))


def test_resample_2x_and_back_matches_ground_truth(tmp_path: Path) -> None:
    """A perfect model at 6 mm: the one-hot GT read through the scene (linear, like any image),
    argmax on the engine grid, labels mapped back by nearest neighbour (scores: linearly)."""
    for image, seg in ((CT, CT_SEG), (MR, MR_SEG)):
        src = nib.load(seg)
        gt = np.asarray(src.dataobj)
        ids = np.unique(gt)
        onehot = (np.searchsorted(ids, gt)[..., None] == np.arange(len(ids))).astype(np.uint8)
        path = tmp_path / f"onehot_{seg.name}"
        nib.save(nib.Nifti1Image(onehot, src.affine, src.header), path)
        s = open_nifti(path, orientation="RAS", target_spacing=(6.0, 6.0, 6.0))
        assert s.spatial_shape == tuple(round(k / 2) for k in gt.shape)
        assert s.meta.spacing == pytest.approx((6.0, 6.0, 6.0), rel=0.05)
        scores = whole(s)
        back = ids[s.to_native_labels(scores.argmax(0))]
        assert back.shape == gt.shape and (back == gt).mean() >= 0.95
        assert (ids[s.to_native_scores(scores).argmax(0)] == gt).mean() >= 0.97
        # labels resampled by nearest neighbour both ways lose a little more at organ borders
        nearest = open_nifti(seg, orientation="RAS", target_spacing=(6.0, 6.0, 6.0), order=0)
        labels = whole(nearest)[0]
        assert labels.dtype == np.uint8 and (nearest.to_native_labels(labels) == gt).mean() >= 0.93
        img = open_nifti(image, target_spacing=(6.0, 6.0, 6.0))
        assert img.dtype == np.float32 and img.spatial_shape == s.spatial_shape
        assert img.to_native_scores(whole(img)).shape == (1, *gt.shape)


def test_resampled_reads_do_not_depend_on_the_box_cut() -> None:
    s = open_nifti(MR, target_spacing=(4.5, 4.0, 5.0))
    full = whole(s)
    nx, ny, nz = s.spatial_shape
    pieces = np.zeros_like(full)
    for x0 in range(0, nx, 17):
        for z0 in range(0, nz, 5):
            box = Box((x0, 0, z0), (min(x0 + 17, nx), ny, min(z0 + 5, nz)))
            pieces[(slice(None), *box.slices())] = s.read(box)
    assert np.array_equal(pieces, full)
    padded = s.read(Box((-2, -2, -2), (nx + 2, ny + 2, nz + 2)), fill=-1)
    assert np.array_equal(padded[:, 2:-2, 2:-2, 2:-2], full) and padded[0, 0].max() == -1


@pytest.mark.parametrize("name", ["example_ct_sm.nii.gz", "example_mr_sm.nii.gz"])  # RAS and LPS files
@pytest.mark.parametrize("pixdim", [(2.5, 2.5, 2.0), (4.0, 3.5, 5.0)])
def test_monai_spacing_grid_reads_what_monai_spacingd_makes(data: Path, name: str, pixdim: tuple) -> None:
    """``spacing_grid="monai"``: the engine grid and its voxels are MONAI's Orientationd + Spacingd
    (bilinear, border), and a bundle's target spacing yields the same spacing in the scene's metadata."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

    path = data / "medical" / "totalsegmentator" / name
    pre = Compose(
        [
            LoadImaged("image"),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=pixdim, mode="bilinear"),
        ]
    )
    theirs = np.asarray(pre({"image": str(path)})["image"])
    scene = open_nifti(str(path), orientation="RAS", target_spacing=pixdim, spacing_grid="monai")
    assert scene.resampled and scene.spatial_shape == theirs.shape[1:]
    mine = scene.read(Box.from_shape(scene.spatial_shape))
    np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(scene.meta.spacing, pixdim)
