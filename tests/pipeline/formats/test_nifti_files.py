"""One NIfTI file's voxels: header checks before any voxel, damaged files, the .nii.gz cache."""

from __future__ import annotations

import gzip
import shutil
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.box import Box
from pipeline.errors import FormatError, InputError
from pipeline.formats import nifti_files
from pipeline.formats.nifti_reader import open_nifti
from tests.pipeline.formats.sample_data import CT, raw, save_like, whole

pytestmark = pytest.mark.usefixtures("data")  # fails, never skips, when the real data is missing


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

    monkeypatch.setattr(nifti_files, "_build_cache", no_rebuild)
    again = open_nifti(CT, cache_dir=str(cache), cache_threshold_bytes=1024)
    assert stores[0].stat().st_mtime_ns == stamp and np.array_equal(whole(again), direct)
    monkeypatch.undo()
    ct = raw(CT)
    four = save_like(np.stack([ct, -ct], axis=-1), CT, tmp_path / "ct4d.nii.gz")
    s4 = open_nifti(four, cache_dir=str(cache), cache_threshold_bytes=1024)
    assert np.array_equal(whole(s4)[1], -ct)


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
    for threshold in (nifti_files.CACHE_THRESHOLD_BYTES, 1024):  # loaded in memory / streamed into the cache
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
