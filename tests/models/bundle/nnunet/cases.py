"""Cases cut from the real TotalSegmentator CT (122x101x30, 3 mm, RAS) for the nnU-Net model and tests.

One real CT is all the shared data holds, so training cases are sub-volumes and flips of it, and the
cases predicted in tests are other sub-volumes/flips (never a training case), plus one resampled to a
spacing unlike the plans' so that nnU-Net's resampling runs both ways. Labels are a few organs mapped
from TotalSegmentator's ids (made by the TotalSegmentator model, see shared/data/MANIFEST.md).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney": 3, "vertebra": 4, "back_muscle": 5}
_TS_IDS = {1: [5], 2: [1], 3: [2, 3], 4: list(range(26, 51)), 5: [86, 87]}

# name -> (flip axes, crop slices per axis) applied to the RAS voxel array
TRAINING = {
    "tr_000": ((), (slice(None), slice(None), slice(None))),
    "tr_001": ((0,), (slice(None), slice(None), slice(None))),
    "tr_002": ((1,), (slice(None), slice(None), slice(None))),
    "tr_003": ((), (slice(10, 110), slice(5, 96), slice(None))),
    "tr_004": ((1,), (slice(0, 90), slice(None), slice(None))),
    "tr_005": ((0, 1), (slice(None), slice(0, 90), slice(4, 28))),
}
UNSEEN = {
    "ts_a": ((0, 1), (slice(5, 117), slice(8, 101), slice(None))),
    "ts_b": ((0,), (slice(20, 122), slice(0, 95), slice(2, 30))),
}


def _load(data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ts = data / "medical" / "totalsegmentator"
    img = nib.load(ts / "example_ct_sm.nii.gz")
    seg = np.asanyarray(nib.load(ts / "example_seg.nii.gz").dataobj)
    labels = np.zeros(seg.shape, np.uint8)
    for new, ids in _TS_IDS.items():
        labels[np.isin(seg, ids)] = new
    return np.asanyarray(img.dataobj).astype(np.int16), labels, img.affine


def _cut(x: np.ndarray, flips: tuple[int, ...], crop: tuple[slice, ...]) -> np.ndarray:
    x = x[crop]
    return np.ascontiguousarray(np.flip(x, flips) if flips else x)


def _save(x: np.ndarray, affine: np.ndarray, path: Path, zooms: tuple[float, ...] | None = None) -> None:
    a = affine.copy()
    if zooms is not None:
        a[:3, :3] = a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0) * np.asarray(zooms)
    img = nib.Nifti1Image(x, a)
    img.set_qform(a, code=1)
    img.set_sform(a, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


def write_training(data: Path, raw: Path) -> list[str]:
    """imagesTr/labelsTr of the training cases under ``raw``; returns the case names."""
    ct, labels, affine = _load(data)
    for name, (flips, crop) in TRAINING.items():
        _save(_cut(ct, flips, crop), affine, raw / "imagesTr" / f"{name}_0000.nii.gz")
        _save(_cut(labels, flips, crop), affine, raw / "labelsTr" / f"{name}.nii.gz")
    return list(TRAINING)


def write_unseen(
    data: Path, folder: Path, *, resampled_spacing: tuple[float, float, float] | None = None
) -> list[Path]:
    """The unseen cases as ``CASE_0000.nii.gz`` in ``folder``; with ``resampled_spacing`` one more case,
    ``ts_r``, is ts_a's volume relabelled to that voxel spacing (so it differs from the plans')."""
    ct, _, affine = _load(data)
    out = []
    for name, (flips, crop) in UNSEEN.items():
        out.append(folder / f"{name}_0000.nii.gz")
        _save(_cut(ct, flips, crop), affine, out[-1])
    if resampled_spacing is not None:
        from scipy.ndimage import zoom

        flips, crop = UNSEEN["ts_a"]
        x = _cut(ct, flips, crop).astype(np.float32)
        factors = [3.0 / s for s in resampled_spacing]
        out.append(folder / "ts_r_0000.nii.gz")
        _save(np.round(zoom(x, factors, order=1)).astype(np.int16), affine, out[-1], resampled_spacing)
    return out


def write_mr(data: Path, folder: Path) -> list[Path]:
    """Two real MR volumes with zero borders, so nnU-Net crops them: the MNI152 T1 (every third voxel,
    labelled 3 mm like the plans) and the TotalSegmentator MR (3 mm as it is)."""
    mni = nib.load(data / "medical" / "nilearn" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    mr = nib.load(data / "medical" / "totalsegmentator" / "example_mr_sm.nii.gz")
    out = [folder / "mni_0000.nii.gz", folder / "mr_0000.nii.gz"]
    x = np.ascontiguousarray(np.asanyarray(mni.dataobj)[::3, ::3, ::3]).astype(np.int16)
    _save(x, mni.affine, out[0], (3.0, 3.0, 3.0))
    _save(np.asanyarray(mr.dataobj).astype(np.int16), mr.affine, out[1])
    return out
