"""nnU-Net's resampling, block by block, held to nnU-Net's own ``resample_data_or_seg_to_shape``.

The real TotalSegmentator CT relabelled to two spacings unlike a 3 mm plan: one where nnU-Net resizes
all three axes with cubic splines, one anisotropic enough (> 3x) that it resizes each slice in-plane
and takes the nearest slice along z. The reader's resampled volume, and scores taken back to the
file's grid, must equal nnU-Net's within float32 rounding, and reading in uneven blocks must give the
whole-volume result bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.box import Box
from pipeline.formats.nifti_reader import open_nifti
from pipeline.formats.spline import HALO, separate_axis, source_coords
from tests.pipeline.formats.sample_data import CT, need, raw

pytestmark = pytest.mark.usefixtures("data")
nnunet_resampling = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")

# native zooms (x, y, z), the plan's spacing, the axis nnU-Net resamples separately; a 2-D configuration
# keeps the case's own spacing between its slices (None: DefaultPreprocessor's ``[original_spacing[0]]``)
CASES = [
    pytest.param((2.5, 2.2, 4.0), (3.0, 3.0, 3.0), None, id="cubic-3d"),
    pytest.param((0.8, 0.9, 3.6), (1.2, 1.2, 2.5), 2, id="anisotropic-separate-z"),
    pytest.param((2.5, 2.2, 4.0), (3.0, 3.0, None), None, id="2d-in-plane-cubic"),
    pytest.param((0.8, 0.9, 3.6), (1.2, 1.2, None), 2, id="2d-in-plane-separate-z"),
]


def _relabelled(tmp_path: Path, zooms: tuple[float, ...]) -> Path:
    need(CT)
    img = nib.load(CT)
    affine = img.affine.copy()
    affine[:3, :3] = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0) * np.asarray(zooms)
    out = nib.Nifti1Image(np.asarray(img.dataobj), affine)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    nib.save(out, tmp_path / "ct.nii.gz")
    return tmp_path / "ct.nii.gz"


def _ranges(x: np.ndarray, axis: int | None) -> np.ndarray:
    if axis is None:
        return np.stack([x.min(axis=(1, 2, 3)), x.max(axis=(1, 2, 3))], axis=-1)[:, None]
    others = tuple(1 + a for a in range(3) if a != axis)
    return np.stack([x.min(axis=others), x.max(axis=others)], axis=-1)


@pytest.mark.parametrize(("zooms", "plan", "axis"), CASES)
def test_resampled_as_nnunet_and_block_exact(zooms, plan, axis, tmp_path):
    path = _relabelled(tmp_path, zooms)
    scene = open_nifti(
        str(path), orientation="native", target_spacing=plan, resampling=(3, 0, None, 1, 0, None, "float32")
    )
    native = raw(path)[None].astype(np.float32)
    spacing = tuple(float(s) for s in scene.native_spacing)
    plan = tuple(s if p is None else p for s, p in zip(spacing, plan, strict=True))
    assert scene.resampled and (scene.shape[3] == native.shape[3] or plan[2] != spacing[2])
    assert scene.separate_axis == axis == separate_axis(spacing, plan)
    theirs = nnunet_resampling.resample_data_or_seg_to_spacing(native, spacing, plan, order=3, order_z=0,
                                                                force_separate_z=None)  # fmt: skip
    assert scene.shape == theirs.shape
    value_range = _ranges(native, axis)
    whole = scene.read(Box.from_shape(scene.spatial_shape), value_range=value_range)
    assert whole.dtype == np.float32
    scale = float(np.abs(theirs).max())
    assert float(np.abs(whole - theirs).max()) <= 2e-7 * scale  # a float32 step of the CT's range
    blocks = np.empty_like(whole)
    step = (29, 23, 11)
    for at in np.ndindex(*(-(-n // s) for n, s in zip(scene.spatial_shape, step, strict=True))):
        start = tuple(i * s for i, s in zip(at, step, strict=True))
        box = Box.from_shape(step, start=start).intersect(Box.from_shape(scene.spatial_shape))
        blocks[(slice(None), *box.slices())] = scene.read(box, value_range=value_range)
    np.testing.assert_array_equal(blocks, whole)

    # scores back to the file's grid: nnU-Net's export (order 1, order_z 0 along its separate axis)
    scores = np.stack([theirs[0], -theirs[0], 0.5 * theirs[0]])
    back = nnunet_resampling.resample_data_or_seg_to_shape(scores, native.shape[1:], plan, spacing, order=1,
                                                           order_z=0, force_separate_z=None)  # fmt: skip
    ours = scene.to_native_scores(scores)
    assert ours.shape == back.shape
    assert float(np.abs(ours - back).max()) <= 2e-6 * scale
    # labels from the scores slab by slab (the export holds one slab): the whole array's argmax
    np.testing.assert_array_equal(scene.to_native_argmax(scores, slab=7), ours.argmax(axis=0))
    # nnU-Net's export as it runs: float16 logits (a realistic range) resized in float64, kept float16
    half = open_nifti(
        str(path), orientation="native", target_spacing=plan, resampling=(3, 0, None, 1, 0, None)
    )
    logits = (scores * (8.0 / scale)).astype(np.float16)
    back16 = nnunet_resampling.resample_data_or_seg_to_shape(logits, native.shape[1:], plan, spacing, order=1,
                                                             order_z=0, force_separate_z=None)  # fmt: skip
    assert back16.dtype == np.float16
    ours16 = half.to_native_scores(logits.astype(np.float32))
    same = float((ours16 == back16.astype(np.float32)).mean())
    assert same >= 0.999, same  # float64 sums in another order flip a float16 rounding now and then
    assert float(np.abs(ours16 - back16).max()) <= 2.0**-7  # by one float16 step at most (|x| <= 8)
    np.testing.assert_array_equal(half.to_native_argmax(logits.astype(np.float32), slab=7), ours16.argmax(0))
    for grid in ("extent", "monai"):  # tilewise's and MONAI's linear returns, too
        linear = open_nifti(str(path), orientation="native", target_spacing=plan, spacing_grid=grid)
        logits = np.random.default_rng(0).normal(size=(3, *linear.spatial_shape)).astype(np.float32)
        np.testing.assert_array_equal(
            linear.to_native_argmax(logits, slab=5), linear.to_native_scores(logits).argmax(axis=0)
        )


def test_halo_covers_the_prefilter():
    """The FIR prefilter's cut tail is below float32 resolution: a spline through a step, read in a
    region that ends HALO + 2 voxels past the coordinate, equals skimage's on the whole line within 1e-11
    of the step (2.7e-12 measured; the cut taps weigh 4.6e-12)."""
    from skimage.transform import resize

    x = np.r_[np.zeros(60), np.ones(60) * 1000.0]
    m = 97
    ref = resize(x[:, None], (m, 1), order=3, mode="edge", anti_aliasing=False, clip=False)[:, 0]
    s = source_coords(0, m, x.size / m)
    from pipeline.formats.spline import needed, resample_axis

    lo, hi = needed(s, 3)
    assert lo <= int(np.floor(s.min())) - 1 - HALO
    padded = x[np.clip(np.arange(lo, hi), 0, x.size - 1)]
    np.testing.assert_allclose(resample_axis(padded, 0, s, 3, lo, x.size), ref, rtol=0, atol=1e-11 * 1000)
