"""NIfTI reader/writers on the real volumes in ../shared/data/medical (read-only; outputs in tmp_path)."""

from __future__ import annotations

import gzip
import pickle
import shutil
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel import orientations as nio

from pipeline.core.box import Box
from pipeline.errors import FormatError, InputError, OutputError
from pipeline.formats import nifti
from pipeline.formats.nifti import (
    group_channel_files,
    open_nifti,
    read_ctbl,
    read_itksnap_labels,
    write_nifti_labels,
    write_nifti_probabilities,
)
from tests.pipeline.formats.sample_data import DATA, MNI_T1, need

TS = DATA / "medical" / "totalsegmentator"
CT, CT_SEG = TS / "example_ct_sm.nii.gz", TS / "example_seg.nii.gz"
MR, MR_SEG = TS / "example_mr_sm.nii.gz", TS / "example_seg_mr.nii.gz"

pytestmark = pytest.mark.usefixtures("data")  # fails, never skips, when the real data is missing


def whole(scene: nifti.NiftiScene, fill: float = 0.0) -> np.ndarray:
    return scene.read(Box.from_shape(scene.spatial_shape), fill)


def raw(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def to_ras(path: Path) -> np.ndarray:
    img = nib.load(path)
    tr = nio.ornt_transform(nio.io_orientation(img.affine), nio.axcodes2ornt("RAS"))
    return nio.apply_orientation(np.asarray(img.dataobj), tr)


def save(data: np.ndarray, like: Path, dest: Path, **kw: object) -> Path:
    src = nib.load(like)
    img = nib.Nifti1Image(data, src.affine, src.header.copy(), **kw)  # type: ignore[arg-type]
    nib.save(img, dest)
    return dest


NAMES = ["background", "spleen", "kidney right", "liver"]
COLORS = ["#00000000", "#ff0000", (0, 200, 0), (10, 20, 30, 128)]


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


def test_write_labels_keeps_grid_codes_intent_and_tables(tmp_path: Path) -> None:
    s = open_nifti(MR_SEG)
    labels = s.to_native_labels(whole(s)[0])
    out = write_nifti_labels(labels, tmp_path / "mr.nii.gz", scene=s, class_names=NAMES, class_colors=COLORS)
    src, back = nib.load(MR_SEG), nib.load(out.image)
    assert np.array_equal(back.affine, src.affine)
    for coded in ("get_qform", "get_sform"):
        (a_src, c_src), (a_out, c_out) = (
            getattr(src.header, coded)(coded=True),
            getattr(back.header, coded)(coded=True),
        )
        assert int(c_out) == int(c_src)
        assert (a_src is None and a_out is None) or np.array_equal(a_src, a_out)
    assert int(back.header["intent_code"]) == 1002
    assert back.get_data_dtype() == np.uint8
    assert back.header.get_xyzt_units() == src.header.get_xyzt_units()
    assert np.array_equal(np.asarray(back.dataobj), raw(MR_SEG))
    assert out.ctbl == tmp_path / "mr.ctbl" and out.itksnap == tmp_path / "mr_itksnap.txt"
    ctbl = read_ctbl(out.ctbl)
    assert [ctbl[i][0] for i in range(4)] == ["background", "spleen", "kidney_right", "liver"]
    assert [ctbl[i][1] for i in range(4)] == [
        (0, 0, 0, 0),
        (255, 0, 0, 255),
        (0, 200, 0, 255),
        (10, 20, 30, 128),
    ]
    assert out.ctbl.read_text().startswith("# Color table file")
    snap = read_itksnap_labels(out.itksnap)
    assert [snap[i][0] for i in range(4)] == NAMES
    assert [snap[i][1][:3] for i in range(4)] == [(0, 0, 0), (255, 0, 0), (0, 200, 0), (10, 20, 30)]
    assert snap[3][1][3] == pytest.approx(128 / 255, abs=1e-3)
    assert "IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL" in out.itksnap.read_text()
    with pytest.raises(OutputError):
        write_nifti_labels(labels, out.image, scene=s, class_names=NAMES)
    # uncompressed output and overwrite
    plain = write_nifti_labels(labels, tmp_path / "mr.nii", scene=s, class_names=NAMES, tables=False).image
    assert np.array_equal(nib.load(plain).affine, src.affine) and plain.stat().st_size > 352
    write_nifti_labels(labels, out.image, scene=s, class_names=NAMES, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if ".tw-tmp-" in p.name]


def test_qform_is_copied_with_its_code(tmp_path: Path) -> None:
    img = nib.load(CT)
    data = np.asarray(img.dataobj)[:20, :20, :10]
    qimg = nib.Nifti1Image(data, img.affine)
    qimg.set_qform(img.affine, code=1)
    qimg.set_sform(img.affine @ np.diag([1.0, 1.0, 1.0, 1.0]), code=4)
    src = tmp_path / "q.nii"
    nib.save(qimg, src)
    s = open_nifti(src)
    out = write_nifti_labels(
        np.zeros(s.native_shape, np.uint8), tmp_path / "lab.nii", scene=s, class_names=NAMES
    )
    back, orig = nib.load(out.image).header, nib.load(src).header
    assert back.get_qform(coded=True)[1] == 1 and back.get_sform(coded=True)[1] == 4
    assert np.array_equal(back.get_qform(), orig.get_qform())
    assert np.array_equal(back.get_sform(), orig.get_sform())


def test_4d_and_multi_file_channel_sets(tmp_path: Path) -> None:
    ct = raw(CT)
    four = save(np.stack([ct, ct // 2], axis=-1), CT, tmp_path / "ct4d.nii.gz")
    s4 = open_nifti(four)
    assert s4.shape == (2, 122, 101, 30) and s4.native_shape == (122, 101, 30)
    v = whole(s4)
    assert np.array_equal(v[0], ct) and np.array_equal(v[1], ct // 2)
    c0 = save(ct, CT, tmp_path / "case_0000.nii.gz")
    c1 = save((ct * 0.5).astype(np.float32), CT, tmp_path / "case_0001.nii.gz", dtype=np.float32)
    lone = save(ct, CT, tmp_path / "scan_2019.nii.gz")
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


def test_big_endian_and_scaled_files_read_physical_values(tmp_path: Path) -> None:
    src = nib.load(CT)
    ct = np.asarray(src.dataobj)
    hdr = src.header.as_byteswapped(">")
    big = tmp_path / "big_endian.nii"
    nib.save(nib.Nifti1Image(ct.astype(">i2"), src.affine, hdr), big)
    assert nib.load(big).header.endianness == ">"
    s = open_nifti(big)
    assert s.dtype == np.dtype(np.int16) and s.dtype.isnative
    assert np.array_equal(whole(s)[0], ct)
    scaled = tmp_path / "scaled.nii.gz"
    img = nib.Nifti1Image(ct, src.affine, src.header.copy(), dtype=np.int16)
    img.header.set_slope_inter(0.5, -100.0)
    nib.save(img, scaled)
    assert nib.load(scaled).dataobj.slope == 0.5 and nib.load(scaled).dataobj.inter == -100.0
    for path in (scaled, big.with_name("scaled_plain.nii")):
        if path.suffix == ".nii":
            nib.save(img, path)
        sc = open_nifti(path)
        assert sc.dtype == np.float32
        assert np.array_equal(whole(sc)[0], ct.astype(np.float32) * 0.5 - 100.0)


def test_big_gz_goes_through_the_zarr_cache_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    direct = whole(open_nifti(CT))
    cache = tmp_path / "cache"
    s = open_nifti(CT, cache_dir=str(cache), cache_threshold_bytes=1024)
    stores = list((cache / "tilewise-nifti").glob("*.zarr"))
    assert len(stores) == 1 and len(list(stores[0].rglob("c/*/*/*/*"))) > 1  # chunked, several z slabs
    assert np.array_equal(whole(s), direct)
    box = Box((-5, 50, 20), (40, 120, 40))
    assert np.array_equal(s.read(box, fill=3), open_nifti(CT).read(box, fill=3))
    stamp = stores[0].stat().st_mtime_ns

    def no_rebuild(*a: object) -> None:
        raise AssertionError("cache rebuilt")

    monkeypatch.setattr(nifti, "_build_cache", no_rebuild)
    again = open_nifti(CT, cache_dir=str(cache), cache_threshold_bytes=1024)
    assert stores[0].stat().st_mtime_ns == stamp and np.array_equal(whole(again), direct)
    monkeypatch.undo()
    ct = raw(CT)
    four = save(np.stack([ct, -ct], axis=-1), CT, tmp_path / "ct4d.nii.gz")
    s4 = open_nifti(four, cache_dir=str(cache), cache_threshold_bytes=1024)
    assert np.array_equal(whole(s4)[1], -ct)


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
    path = save(ct, CT, tmp_path / "nan.nii.gz", dtype=np.float32)
    s = open_nifti(path)
    mask = s.read_nodata(Box((0, 0, 0), (12, 12, 12)))
    assert mask is not None and mask[5:10, 5:10, 5:10].all() and mask.sum() == 125
    assert s.read_nodata(Box((-1, 0, 0), (2, 2, 2)))[0].all()  # outside is nodata
    assert open_nifti(CT).read_nodata(Box((0, 0, 0), (4, 4, 4))) is None


def test_probabilities_written_on_the_input_grid(tmp_path: Path) -> None:
    s = open_nifti(MR)
    rng = np.random.default_rng(0)
    probs = rng.random((3, *s.spatial_shape)).astype(np.float32)
    native = s.to_native_scores(probs)
    assert native.shape == (3, *s.native_shape)
    p8 = write_nifti_probabilities(native, tmp_path / "p.nii.gz", scene=s)
    back = nib.load(p8)
    assert back.shape == (*s.native_shape, 3) and back.get_data_dtype() == np.uint8
    assert np.array_equal(back.affine, nib.load(MR).affine)
    assert np.abs(back.get_fdata()[..., 1] - native[1]).max() <= 0.5 / 255 + 1e-6
    pf = write_nifti_probabilities(native, tmp_path / "pf.nii", scene=s, dtype=np.float32)
    assert np.array_equal(nib.load(pf).get_fdata(dtype=np.float32), np.moveaxis(native, 0, -1))


def test_huge_header_dims_refused_before_allocating(tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), tiny)
    blob = bytearray(tiny.read_bytes())
    blob[40:48] = np.array([3, 30000, 30000, 30000], "<i2").tobytes()  # dim[0..3]: 2.7e13 voxels
    lying = tmp_path / "lying.nii"
    lying.write_bytes(bytes(blob))
    lying_gz = tmp_path / "lying.nii.gz"
    lying_gz.write_bytes(gzip.compress(bytes(blob)))
    for path in (lying, lying_gz):
        tracemalloc.start()
        with pytest.raises(FormatError, match="voxels") as err:
            open_nifti(path, cache_dir=str(tmp_path / "c"))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert str(path) in str(err.value) and peak < 20 * 2**20
    assert not (tmp_path / "c" / "tilewise-nifti").exists()


def test_5d_refused(tmp_path: Path) -> None:
    path = tmp_path / "five.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2, 3), np.float32), np.eye(4)), path)
    with pytest.raises(InputError, match="5-D") as err:
        open_nifti(path)
    assert str(path) in str(err.value)


def test_damaged_files_name_themselves(tmp_path: Path) -> None:
    blob = CT.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    for threshold in (nifti.CACHE_THRESHOLD_BYTES, 1024):  # loaded in memory / streamed into the cache
        with pytest.raises(FormatError) as err:
            open_nifti(cut, cache_dir=str(tmp_path / "c"), cache_threshold_bytes=threshold)
        assert str(cut) in str(err.value)
    assert not list((tmp_path / "c" / "tilewise-nifti").glob("*"))  # no half-built cache left
    short = tmp_path / "short.nii"
    nii = nib.load(CT)
    nib.save(nii, short)
    short.write_bytes(short.read_bytes()[:-1000])
    with pytest.raises(FormatError, match="truncated"):
        open_nifti(short)
    empty = tmp_path / "empty.nii.gz"
    empty.touch()
    with pytest.raises(FormatError, match="empty"):
        open_nifti(empty)
    wrong = tmp_path / "ct.nrrd"
    shutil.copy(CT, wrong)
    with pytest.raises(FormatError, match="not a NIfTI") as err:
        open_nifti(wrong)
    assert str(wrong) in str(err.value)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"definitely not gzip" * 50)
    with pytest.raises(FormatError):
        open_nifti(garbage)
    with pytest.raises(InputError, match="no such file"):
        open_nifti(tmp_path / "missing.nii.gz")


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


def test_nifti2_input_gives_nifti2_labels(tmp_path: Path) -> None:
    src = nib.load(MR)
    path = tmp_path / "mr2.nii.gz"
    nib.save(
        nib.Nifti2Image(np.asarray(src.dataobj), src.affine, nib.Nifti2Header.from_header(src.header)), path
    )
    s = open_nifti(path)
    assert np.array_equal(whole(s)[0], to_ras(MR))
    out = write_nifti_labels(
        s.to_native_labels(whole(s)[0] > 100), tmp_path / "l.nii.gz", scene=s, class_names=NAMES
    )
    back = nib.load(out.image)
    assert isinstance(back, nib.Nifti2Image) and np.array_equal(back.affine, src.affine)
    assert int(back.header["intent_code"]) == 1002 and back.get_data_dtype() == np.uint8
