"""The bad-input catalogue: every kind is generated here from the real files in ../shared/data.

Each ``Kind`` writes one scene (or a thing that looks like one) into a job's input folder and says what
the job must do with it: ``ok`` (the scene finishes), ``failed`` (a one-line reason naming the file
and containing ``words``), or ``absent`` (not a scene at all: nothing is produced for it).
Two jobs run the catalogue: a 2-D job (3-band bundle, good scene ``good.tif``) and a 3-D job
(1-channel bundle, good scene ``good.nii.gz``).
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import rasterio
import zarr
from affine import Affine

TENTH = "geo/rasterio/rgb-byte-tenth.tif"  # 3 x 71 x 79 uint8, nodata 0, CC0
RGB = "geo/rasterio/RGB.byte.tif"  # 3 x 718 x 791 uint8, CC0
CT = "medical/totalsegmentator/example_ct_sm.nii.gz"  # 122 x 101 x 30 int16, Apache-2.0


@dataclass(frozen=True)
class Kind:
    name: str
    dims: int  # which job: 2 (3-band 2-D bundle) or 3 (1-channel 3-D bundle)
    make: Callable[[Path, Path], str]  # (input folder, data root) -> scene path relative to the folder
    expect: str  # ok | failed | absent
    words: tuple[str, ...] = ()  # lowercase words the failure reason must contain

    @property
    def stem(self) -> str:
        from pipeline.formats.source import SceneSource
        from pipeline.job.discover import scene_stem

        return scene_stem(SceneSource("geotiff", (self.name,)))


# ------------------------------------------------------------------------------------------ helpers
def tenth(data: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(data / TENTH) as src:
        return src.read(), dict(src.profile)


def write_tif(path: Path, pixels: np.ndarray, **profile: object) -> None:
    base = {"driver": "GTiff", "count": pixels.shape[0], "height": pixels.shape[1]}
    base.update(width=pixels.shape[2], dtype=str(pixels.dtype))
    base.update(profile)
    with rasterio.open(path, "w", **base) as dst:
        dst.write(pixels)


def georef(profile: dict) -> dict:
    return {"crs": profile["crs"], "transform": profile["transform"]}


def write_crop(data: Path, dest: Path, size: int = 240) -> Path:
    """A ``size`` x ``size`` window of the real Landsat scene (CC0) as its own GeoTIFF."""
    from rasterio.windows import Window

    with rasterio.open(data / RGB) as full:
        window = Window(200, 200, size, size)
        profile = {**full.profile, "width": size, "height": size, "transform": full.window_transform(window)}
        with rasterio.open(dest, "w", **profile) as dst:
            dst.write(full.read(window=window))
    return dest


def ct_small(data: Path) -> nib.Nifti1Image:
    """A 40 x 36 x 12 crop of the real CT: small enough to run a 3-D job quickly."""
    img = nib.load(data / CT)
    return img.slicer[40:80, 30:66, 10:22]


def nii_bytes(img: nib.Nifti1Image) -> bytes:
    """Uncompressed single-file .nii bytes of an image."""
    return img.to_bytes()


# -------------------------------------------------------------------------------------- 2-D kinds
def _zero_tif(folder: Path, data: Path) -> str:
    (folder / "empty.tif").write_bytes(b"")
    return "empty.tif"


def _zero_nii(folder: Path, data: Path) -> str:
    (folder / "empty.nii.gz").write_bytes(b"")
    return "empty.nii.gz"


def _truncated_tif(folder: Path, data: Path) -> str:
    raw = (data / RGB).read_bytes()
    (folder / "cut.tif").write_bytes(raw[: len(raw) // 2])
    return "cut.tif"


def _truncated_niigz(folder: Path, data: Path) -> str:
    raw = (data / CT).read_bytes()
    (folder / "cut_ct.nii.gz").write_bytes(raw[: len(raw) // 2])
    return "cut_ct.nii.gz"


def _truncated_nii(folder: Path, data: Path) -> str:
    raw = nii_bytes(ct_small(data))
    (folder / "cut_ct.nii").write_bytes(raw[: len(raw) * 2 // 3])
    return "cut_ct.nii"


def _text_as_tif(folder: Path, data: Path) -> str:
    (folder / "notes.tif").write_text("these are field notes, not a raster\n" * 20)
    return "notes.tif"


def _png_as_tif(folder: Path, data: Path) -> str:
    pixels, _ = tenth(data)
    tmp = folder.parent / "photo.png"
    write_tif(tmp, pixels, driver="PNG")
    (folder / "photo.tif").write_bytes(tmp.read_bytes())
    tmp.unlink()
    for extra in folder.parent.glob("photo.png.aux.xml"):
        extra.unlink()
    return "photo.tif"


def _tif_as_niigz(folder: Path, data: Path) -> str:
    (folder / "fake.nii.gz").write_bytes((data / TENTH).read_bytes())
    return "fake.nii.gz"


def _nii_as_tif(folder: Path, data: Path) -> str:
    (folder / "scan.tif").write_bytes(nii_bytes(ct_small(data)))
    return "scan.tif"


def _dir_named_tif(folder: Path, data: Path) -> str:
    (folder / "folder.tif").mkdir()
    return "folder.tif"


def _symlink_loop_file(folder: Path, data: Path) -> str:
    os.symlink("loop_b.tif", folder / "loop_a.tif")
    os.symlink("loop_a.tif", folder / "loop_b.tif")
    return "loop_a.tif"


def _symlink_loop_dir(folder: Path, data: Path) -> str:
    sub = folder / "sub"
    sub.mkdir()
    os.symlink("..", sub / "again")  # sub/again -> folder: a cycle for any walker that follows links
    return "sub/again"


def _dangling_symlink(folder: Path, data: Path) -> str:
    os.symlink("nowhere/missing.tif", folder / "dangling.tif")
    return "dangling.tif"


def _band_count(folder: Path, data: Path) -> str:
    pixels, profile = tenth(data)
    four = np.concatenate([pixels, pixels[:1]])
    write_tif(folder / "four_bands.tif", four, **georef(profile))
    return "four_bands.tif"


def _volume_on_2d(folder: Path, data: Path) -> str:
    nib.save(ct_small(data), folder / "volume.nii.gz")
    return "volume.nii.gz"


def _all_nodata(folder: Path, data: Path) -> str:
    pixels, profile = tenth(data)
    write_tif(folder / "collar.tif", np.zeros_like(pixels), nodata=0, **georef(profile))
    return "collar.tif"


def _all_nan(folder: Path, data: Path) -> str:
    pixels, profile = tenth(data)
    nan = np.full(pixels.shape, np.nan, dtype=np.float32)
    write_tif(folder / "nan.tif", nan, **georef(profile))
    return "nan.tif"


def _constant(folder: Path, data: Path) -> str:
    pixels, profile = tenth(data)
    write_tif(folder / "flat.tif", np.full_like(pixels, 7), **georef(profile))
    return "flat.tif"


def _no_crs(folder: Path, data: Path) -> str:
    pixels, _ = tenth(data)
    write_tif(folder / "plain.tif", pixels)
    return "plain.tif"


# 30 degrees rotated and 5 degrees sheared, 3 km pixels (a GDAL geotransform with non-zero b and d)
ROTATED = Affine.translation(101985.0, 2826915.0) @ Affine.rotation(30.0) @ Affine.shear(5.0, 0.0)
ROTATED = ROTATED @ Affine.scale(3000.0, -3000.0)


def _rotated(folder: Path, data: Path) -> str:
    pixels, profile = tenth(data)
    write_tif(folder / "rotated.tif", pixels, crs=profile["crs"], transform=ROTATED)
    return "rotated.tif"


def _complex(folder: Path, data: Path) -> str:
    pixels, profile = tenth(data)
    write_tif(folder / "complex.tif", pixels.astype(np.complex64), crs=profile["crs"])
    return "complex.tif"


def _non_ascii(folder: Path, data: Path) -> str:
    sub = folder / "dossier été"
    sub.mkdir()
    (sub / "scène №1.tif").write_bytes((data / TENTH).read_bytes())
    return "dossier été/scène №1.tif"


def _spaces(folder: Path, data: Path) -> str:
    (folder / "my scene  copy.tif").write_bytes((data / TENTH).read_bytes())
    return "my scene  copy.tif"


def huge_header_nii(path: Path) -> None:
    """A valid NIfTI-2 header promising 100000^3 int16 voxels (2 PB), followed by 64 bytes."""
    hdr = nib.Nifti2Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape((100000, 100000, 100000))
    hdr.set_data_offset(544)
    path.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\1" * 64)


def _huge_header(folder: Path, data: Path) -> str:
    huge_header_nii(folder / "huge.nii")
    return "huge.nii"


def _huge_header_gz(folder: Path, data: Path) -> str:
    raw = bytearray(nii_bytes(ct_small(data)))
    struct.pack_into("<4h", raw, 40, 3, 30000, 30000, 30000)  # dim[0..3]: 27 G voxels, 54 GB
    (folder / "huge_gz.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    return "huge_gz.nii.gz"


def _lying_gz(folder: Path, data: Path) -> str:
    """Under the voxel cap (8 G voxels, 16 GB), but far more than 23 kB of gzip can expand to."""
    raw = bytearray(nii_bytes(ct_small(data)))
    struct.pack_into("<4h", raw, 40, 3, 2000, 2000, 2000)
    (folder / "liar.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    return "liar.nii.gz"


def _five_d(folder: Path, data: Path) -> str:
    vol = np.asarray(ct_small(data).dataobj)[:10, :10, :10]
    five = np.stack([np.stack([vol, vol], -1)] * 2, -1)
    nib.save(nib.Nifti1Image(five, np.eye(4)), folder / "five_d.nii.gz")
    return "five_d.nii.gz"


# -------------------------------------------------------------------------------------- 3-D kinds
def _raster_on_3d(folder: Path, data: Path) -> str:
    (folder / "flat_scene.tif").write_bytes((data / TENTH).read_bytes())
    return "flat_scene.tif"


def ct_zarr(path: Path, data: Path) -> zarr.Array:
    vol = np.asarray(ct_small(data).dataobj).transpose(2, 1, 0)  # zyx
    arr = zarr.create_array(store=str(path), shape=vol.shape, dtype=vol.dtype, chunks=(6, 18, 20))
    arr[...] = vol
    return arr


def _chunk_files(path: Path) -> list[Path]:
    return sorted(p for p in (path / "c").rglob("*") if p.is_file())


def _zarr_missing_chunk(folder: Path, data: Path) -> str:
    ct_zarr(folder / "holes.zarr", data)
    _chunk_files(folder / "holes.zarr")[1].unlink()
    return "holes.zarr"


def _zarr_corrupt_chunk(folder: Path, data: Path) -> str:
    ct_zarr(folder / "rotten.zarr", data)
    _chunk_files(folder / "rotten.zarr")[1].write_bytes(b"\x13\x37garbage" * 10)
    return "rotten.zarr"


def _ome_without_multiscales(folder: Path, data: Path) -> str:
    root = zarr.open_group(str(folder / "nomulti.ome.zarr"), mode="w")
    root.attrs["ome"] = {"version": "0.5"}
    vol = np.asarray(ct_small(data).dataobj).transpose(2, 1, 0)
    root.create_array("0", shape=vol.shape, dtype=vol.dtype)[...] = vol
    return "nomulti.ome.zarr"


def _empty_zarr_dir(folder: Path, data: Path) -> str:
    (folder / "hollow.zarr").mkdir()
    return "hollow.zarr"


def _channel_count_3d(folder: Path, data: Path) -> str:
    vol = np.asarray(ct_small(data).dataobj)
    img = nib.Nifti1Image(np.stack([vol] * 4, -1), ct_small(data).affine)
    nib.save(img, folder / "four_channel.nii.gz")
    return "four_channel.nii.gz"


def _nan_volume(folder: Path, data: Path) -> str:
    small = ct_small(data)
    nan = np.full(small.shape, np.nan, dtype=np.float32)
    nib.save(nib.Nifti1Image(nan, small.affine), folder / "nan_volume.nii.gz")
    return "nan_volume.nii.gz"


KINDS: list[Kind] = [
    Kind("empty.tif", 2, _zero_tif, "failed", ("empty",)),
    Kind("empty.nii.gz", 2, _zero_nii, "failed", ("empty",)),
    Kind("cut.tif", 2, _truncated_tif, "failed", ("truncated",)),
    Kind("cut_ct.nii.gz", 2, _truncated_niigz, "failed", ("truncated",)),
    Kind("cut_ct.nii", 2, _truncated_nii, "failed", ("truncated",)),
    Kind("notes.tif", 2, _text_as_tif, "failed", ("not a raster",)),
    Kind("photo.tif", 2, _png_as_tif, "ok"),
    Kind("fake.nii.gz", 2, _tif_as_niigz, "failed", ("not a nifti",)),
    Kind("scan.tif", 2, _nii_as_tif, "failed", ("not a raster",)),
    Kind("folder.tif", 2, _dir_named_tif, "failed", ("is a folder",)),
    Kind("loop_a.tif", 2, _symlink_loop_file, "failed", ("symbolic link", "loop")),
    Kind("sub/again", 2, _symlink_loop_dir, "absent"),
    Kind("dangling.tif", 2, _dangling_symlink, "failed", ("broken symbolic link",)),
    Kind("four_bands.tif", 2, _band_count, "failed", ("4 bands", "expects 3")),
    Kind("volume.nii.gz", 2, _volume_on_2d, "failed", ("3-d", "2-d model")),
    Kind("collar.tif", 2, _all_nodata, "ok"),
    Kind("nan.tif", 2, _all_nan, "ok"),
    Kind("flat.tif", 2, _constant, "ok"),
    Kind("plain.tif", 2, _no_crs, "ok"),
    Kind("rotated.tif", 2, _rotated, "ok"),
    Kind("complex.tif", 2, _complex, "failed", ("complex",)),
    Kind("dossier été/scène №1.tif", 2, _non_ascii, "ok"),
    Kind("my scene  copy.tif", 2, _spaces, "ok"),
    Kind("huge.nii", 2, _huge_header, "failed", ("header promises",)),
    Kind("huge_gz.nii.gz", 2, _huge_header_gz, "failed", ("header promises",)),
    Kind("liar.nii.gz", 2, _lying_gz, "failed", ("cannot hold",)),
    Kind("five_d.nii.gz", 2, _five_d, "failed", ("5-d",)),
    Kind("flat_scene.tif", 3, _raster_on_3d, "failed", ("2-d", "3-d model")),
    Kind("holes.zarr", 3, _zarr_missing_chunk, "ok"),
    Kind("rotten.zarr", 3, _zarr_corrupt_chunk, "failed", ("chunk",)),
    Kind("nomulti.ome.zarr", 3, _ome_without_multiscales, "failed", ("multiscales",)),
    Kind("hollow.zarr", 3, _empty_zarr_dir, "failed", ("not a zarr",)),
    Kind("four_channel.nii.gz", 3, _channel_count_3d, "failed", ("4 channels", "expects 1")),
    Kind("nan_volume.nii.gz", 3, _nan_volume, "ok"),
]


def build_folder(folder: Path, data: Path, dims: int) -> dict[str, Kind]:
    """The input folder of one catalogue job: a good scene plus every kind of that job."""
    folder.mkdir(parents=True)
    if dims == 2:
        (folder / "good.tif").write_bytes((data / TENTH).read_bytes())
    else:
        nib.save(ct_small(data), folder / "good.nii.gz")
    made = {}
    for kind in KINDS:
        if kind.dims == dims:
            made[kind.make(folder, data)] = kind
    return made
