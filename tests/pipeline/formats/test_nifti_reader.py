"""NIfTI reader on the real volumes in ../shared/data/medical: orientation, spacing, channel sets."""

from __future__ import annotations

import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.box import Box
from pipeline.errors import InputError
from pipeline.formats.nifti_reader import group_channel_files, open_nifti
from tests.pipeline.formats.sample_data import (
    CT,
    MNI_T1,
    MR,
    MR_SEG,
    need,
    raw,
    save_like,
    to_ras,
    whole,
)

pytestmark = pytest.mark.usefixtures("data")  # fails, never skips, when the real data is missing


def test_mni_t1_ras_1mm() -> None:
    need(MNI_T1)
    s = open_nifti(str(MNI_T1))
    assert s.shape == (1, 197, 233, 189) and s.dtype == np.uint8
    assert s.meta.spacing == (1.0, 1.0, 1.0) and s.meta.orientation == "RAS"
    assert np.array_equal(s.meta.affine, nib.load(MNI_T1).affine)
    box = Box((90, 100, 80), (110, 130, 100))
    assert np.array_equal(s.read(box)[0], raw(MNI_T1)[90:110, 100:130, 80:100])
    assert s.read_nodata(box) is None


def test_ct_ras_3mm_int16() -> None:
    s = open_nifti(CT)
    assert s.shape == (1, 122, 101, 30) and s.dtype == np.int16
    assert s.meta.spacing == (3.0, 3.0, 3.0) and s.meta.orientation == "RAS"
    assert np.array_equal(whole(s)[0], raw(CT))


def test_lps_mr_reoriented_to_ras_and_exactly_back() -> None:
    s = open_nifti(MR, orientation="RAS")
    assert nib.aff2axcodes(nib.load(MR).affine) == ("L", "P", "S")
    assert s.shape == (1, 117, 91, 20) and s.meta.orientation == "RAS"
    assert np.array_equal(whole(s)[0], np.flip(raw(MR), (0, 1)))  # LPS -> RAS: x and y flipped
    assert np.array_equal(s.meta.affine, nib.load(MR).affine)  # meta keeps the file's own grid
    seg = open_nifti(MR_SEG, orientation="RAS")
    labels_engine = whole(seg)[0]
    assert np.array_equal(labels_engine, to_ras(MR_SEG))
    assert np.array_equal(seg.to_native_labels(labels_engine), raw(MR_SEG))
    # the file's own orientation is the identity
    assert np.array_equal(whole(open_nifti(MR, orientation="LPS"))[0], raw(MR))
    # an odd orientation is a permutation too, still exactly invertible
    odd = open_nifti(MR_SEG, orientation="SLA")
    assert odd.shape == (1, 20, 117, 91)
    assert np.array_equal(odd.to_native_labels(whole(odd)[0]), raw(MR_SEG))
    with pytest.raises(InputError):
        seg.to_native_labels(labels_engine[:-1])


def test_padded_reads_match_the_volume() -> None:
    s = open_nifti(MR)
    ref = to_ras(MR)
    b = s.read(Box((-3, 10, 5), (20, 30, 25)), fill=-7)
    assert b.shape == (1, 23, 20, 20)
    assert np.array_equal(b[0, 3:, :, :15], ref[:20, 10:30, 5:20])
    assert (b[0, :3] == -7).all() and (b[0, :, :, 15:] == -7).all()


def test_4d_and_multi_file_channel_sets(tmp_path: Path) -> None:
    ct = raw(CT)
    four = save_like(np.stack([ct, ct // 2], axis=-1), CT, tmp_path / "ct4d.nii.gz")
    s4 = open_nifti(four)
    assert s4.shape == (2, 122, 101, 30) and s4.native_shape == (122, 101, 30)
    v = whole(s4)
    assert np.array_equal(v[0], ct) and np.array_equal(v[1], ct // 2)
    c0 = save_like(ct, CT, tmp_path / "case_0000.nii.gz")
    c1 = save_like((ct * 0.5).astype(np.float32), CT, tmp_path / "case_0001.nii.gz", dtype=np.float32)
    lone = save_like(ct, CT, tmp_path / "scan_2019.nii.gz")
    groups = group_channel_files([str(c1), str(lone), str(c0), str(tmp_path / "other.nii")])
    assert [str(c0), str(c1)] in groups and [str(lone)] in groups and [str(tmp_path / "other.nii")] in groups
    sm = open_nifti([str(c0), str(c1)])
    assert sm.shape == (2, 122, 101, 30) and sm.dtype == np.float32
    box = Box((10, 10, 5), (50, 40, 20))
    got = sm.read(box)
    assert np.array_equal(got[0], ct[10:50, 10:40, 5:20]) and np.allclose(
        got[1], ct[10:50, 10:40, 5:20] * 0.5
    )
    shifted = nib.load(c1)
    aff = shifted.affine.copy()
    aff[0, 3] += 3.0
    moved = nib.Nifti1Image(np.asarray(shifted.dataobj), aff)
    bad = tmp_path / "bad_0001.nii.gz"
    nib.save(moved, bad)
    with pytest.raises(InputError) as err:
        open_nifti([str(c0), str(bad)])
    assert str(c0) in str(err.value) and str(bad) in str(err.value)


def test_two_d_files_keep_two_dims_and_z1_stays_3d(tmp_path: Path) -> None:
    src = nib.load(MR)
    slab = np.asarray(src.dataobj)[:, :, 7]
    flat = tmp_path / "slice2d.nii.gz"
    nib.save(nib.Nifti1Image(slab, src.affine), flat)
    s = open_nifti(flat)
    assert s.shape == (1, 117, 91) and s.meta.orientation == "RA" and len(s.meta.spacing) == 2
    assert np.array_equal(whole(s)[0], np.flip(slab, (0, 1)))
    assert np.array_equal(s.to_native_labels(whole(s)[0]), slab)
    one = tmp_path / "slab1.nii.gz"
    nib.save(nib.Nifti1Image(slab[:, :, None], src.affine), one)
    assert open_nifti(one).shape == (1, 117, 91, 1)


def test_nan_voxels_are_nodata(tmp_path: Path) -> None:
    ct = raw(CT).astype(np.float32)
    ct[5:10, 5:10, 5:10] = np.nan
    path = save_like(ct, CT, tmp_path / "nan.nii.gz", dtype=np.float32)
    s = open_nifti(path)
    mask = s.read_nodata(Box((0, 0, 0), (12, 12, 12)))
    assert mask is not None and mask[5:10, 5:10, 5:10].all() and mask.sum() == 125
    assert s.read_nodata(Box((-1, 0, 0), (2, 2, 2)))[0].all()  # outside is nodata
    assert open_nifti(CT).read_nodata(Box((0, 0, 0), (4, 4, 4))) is None


def test_pickles_as_a_reopen_and_reads_remote_uris(tmp_path: Path) -> None:
    import fsspec

    s = open_nifti(MR, target_spacing=(6.0, 6.0, 6.0))
    again = pickle.loads(pickle.dumps(s))
    assert again.shape == s.shape and np.array_equal(whole(again), whole(s))
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/mr.nii.gz", MR.read_bytes())
    remote = open_nifti("memory://bucket/mr.nii.gz", cache_dir=str(tmp_path))
    assert remote.uri == "memory://bucket/mr.nii.gz"
    assert np.array_equal(whole(remote), whole(open_nifti(MR)))
    fs.rm("/bucket/mr.nii.gz")


def test_crop_shows_the_region_and_maps_labels_and_scores_back_padded() -> None:
    """nnU-Net's crop to the non-zero box (the MNI T1's zero border): reads outside it are ``fill``,
    labels come back zero-padded and scores with background 1 outside, on the file's grid."""
    need(MNI_T1)
    box = Box((26, 27, 0), (171, 208, 155))
    s = open_nifti(str(MNI_T1), orientation="NATIVE", crop=(box.start, box.stop))
    assert s.shape == (1, *box.shape) and s.crop == box
    assert np.array_equal(s.read(Box.from_shape(box.shape))[0], raw(MNI_T1)[box.slices()])
    edge = s.read(Box((-2, 0, 0), (3, 4, 4)), fill=7)[0]  # two voxels before the crop: fill, not data
    assert (edge[:2] == 7).all() and np.array_equal(edge[2:], raw(MNI_T1)[26:29, 27:31, 0:4])
    labels = np.ones(box.shape, np.uint8)
    back = s.to_native_labels(labels)
    assert back.shape == s.native_shape and back.sum() == labels.sum() and (back[box.slices()] == 1).all()
    scores = s.to_native_scores(np.full((2, *box.shape), 0.5, np.float32))
    assert scores[0, 0, 0, 0] == 1 and scores[1, 0, 0, 0] == 0 and scores[1][box.slices()].min() == 0.5
    assert pickle.loads(pickle.dumps(s)).crop == box  # Dask workers reopen it cropped
    with pytest.raises(Exception, match="does not lie inside"):
        open_nifti(str(MNI_T1), crop=((0, 0, 0), (300, 10, 10)))
