"""One NIfTI file's voxels, read safely and fast enough to tile.

The header is checked before any voxel is touched, so a lying or truncated header fails with a reason
instead of allocating. Reads go through nibabel's proxy, except where it would be slow: gzip cannot
seek, so a small ``.nii.gz`` is loaded once and a big one is decompressed once into a chunked zarr
cache; an object-storage file is first copied into the cache folder.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from math import prod
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import zarr
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from pipeline.atomic import atomic_path, temp_sibling
from pipeline.errors import FormatError, InputError, TilewiseError
from pipeline.formats.local import missing_reason
from pipeline.formats.zarr_reader import fast_compressor, storage_options

MAX_VOXELS = 2**34  # beyond this a header is far likelier corrupt than real
_MAX_GZIP_RATIO = 1100  # deflate's best case is ~1032:1, so a .nii.gz cannot hold more than this
# A .nii.gz above this (uncompressed) is read from a zarr cache, not held whole: a case held whole
# sat beside the block pass's buffers for the whole run (256 MB of a 512^3 CT's int16 voxels).
CACHE_THRESHOLD_BYTES = 64 * 2**20
_SLAB_BYTES = 64 * 2**20


@contextmanager
def _reading(path: str) -> Iterator[None]:
    """Turn the many ways a damaged file fails (EOF, zlib, short read) into one FormatError."""
    try:
        yield
    except TilewiseError:
        raise
    except (OSError, EOFError, zlib.error, ValueError, OverflowError, ImageFileError, HeaderDataError) as exc:
        detail = " ".join(str(exc).split())[:300]
        if "gzip" in detail.lower() and "end-of-stream" not in detail:
            raise FormatError(f"not a NIfTI file, or not gzip-compressed: {detail}", path=path) from exc
        raise FormatError(f"cannot read NIfTI data (corrupt or truncated?): {detail}", path=path) from exc


def _is_gz(path: str) -> bool:
    return path.lower().endswith(".nii.gz")


def _localize(uri: str, cache_dir: Path) -> str:
    """Remote NIfTI (s3://...) is copied once into the cache: gzip and nibabel need a seekable file."""
    if "://" not in uri or uri.startswith("file://"):
        return uri.removeprefix("file://")
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri, **storage_options(uri))
    try:
        info = fs.info(path)
    except FileNotFoundError as exc:
        raise InputError("no such file", path=uri) from exc
    tag = f"{uri}|{info.get('size')}|{info.get('ETag') or info.get('mtime') or info.get('LastModified')}"
    dest = cache_dir / "remote" / f"{hashlib.sha1(tag.encode()).hexdigest()[:16]}-{posixpath.basename(path)}"
    if not dest.exists():
        with atomic_path(dest, overwrite=True) as tmp:
            fs.get_file(path, str(tmp))
    return str(dest)


def _load(path: str, uri: str) -> nib.Nifti1Image:
    """Header only: check it before any voxel is touched, so a lying header cannot allocate."""
    if not (uri.lower().endswith(".nii") or _is_gz(uri)):
        raise FormatError("not a NIfTI file name (expected .nii or .nii.gz)", path=uri)
    if os.path.isdir(path):
        raise InputError("is a folder, not a NIfTI file", path=uri)
    if not os.path.isfile(path):
        raise InputError(missing_reason(path), path=uri)
    if os.path.getsize(path) == 0:
        raise FormatError("empty file (0 bytes)", path=uri)
    with _reading(uri):
        img = nib.load(path)
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise FormatError(f"not a NIfTI-1/2 image ({type(img).__name__})", path=uri)
    shape = img.shape
    while len(shape) > 4 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 4 or len(shape) < 2:
        raise InputError(f"{len(shape)}-D image {img.shape}: only 2-D, 3-D or 4-D (channels last)", path=uri)
    if min(shape) <= 0:
        raise FormatError(f"header has an empty dimension {img.shape}; corrupt?", path=uri)
    if prod(shape) > MAX_VOXELS:
        raise FormatError(f"header promises {img.shape}: over {MAX_VOXELS} voxels; corrupt?", path=uri)
    dtype = img.get_data_dtype()
    if dtype.kind not in "biuf":
        raise InputError(f"unsupported voxel type {dtype}", path=uri)
    with _reading(uri):
        need = int(img.header.get_data_offset()) + prod(img.shape) * dtype.itemsize
    size = os.path.getsize(path)
    if not _is_gz(path) and size < need:
        raise FormatError(f"truncated: {size} bytes, header needs {need}", path=uri)
    if _is_gz(path) and need > _MAX_GZIP_RATIO * size:  # deflate cannot expand more than ~1032:1
        raise FormatError(
            f"header promises {img.shape} ({need} bytes) but {size} compressed bytes cannot hold that; "
            "truncated or corrupt",
            path=uri,
        )
    return img


def _file_dtype(img: nib.Nifti1Image) -> np.dtype:
    """The dtype voxels are served in: float32 where scl_slope/scl_inter scale them, native order."""
    raw = img.get_data_dtype()
    # nibabel moves scl_slope/scl_inter from the header into the proxy on load
    slope, inter = getattr(img.dataobj, "slope", 1.0), getattr(img.dataobj, "inter", 0.0)
    if slope != 1 or inter != 0:
        return np.dtype(np.float64 if raw.itemsize > 4 and raw.kind == "f" else np.float32)
    return raw.newbyteorder("=")


class VoxelSource:
    """One file's voxels as ``(X, Y, Z, C)`` in file order: via the proxy, memory or a zarr cache."""

    def __init__(self, uri: str, img: nib.Nifti1Image, path: str | None = None) -> None:
        self.uri, self.img, self.path = uri, img, path or uri
        self.data: Any = None  # in memory or a zarr cache once ``prepare`` chose so; None: the proxy
        self.nd = len(img.shape)
        self.channels = img.shape[3] if self.nd >= 4 else 1
        self.dtype = _file_dtype(img)

    @classmethod
    def open(cls, uri: str, cache_dir: Path) -> VoxelSource:
        """The header only, checked; a remote file is copied into ``cache_dir`` first."""
        path = _localize(uri, cache_dir)
        return cls(uri, _load(path, uri), path)

    def prepare(self, cache_dir: Path, threshold_bytes: int) -> bool | None:
        """Make a ``.nii.gz`` seekable (memory below ``threshold_bytes`` uncompressed, else the zarr
        cache). Returns whether float voxels hold NaN: None where unknown (read in place)."""
        floating = self.dtype.kind == "f"
        nan: bool | None = None
        size = prod(self.img.shape) * self.img.get_data_dtype().itemsize
        if _is_gz(self.path) and size > threshold_bytes:
            self.data, nan = _cached(self, self.path, cache_dir)
        elif _is_gz(self.path):
            with _reading(self.uri):
                raw = self.img.get_fdata(dtype=self.dtype) if floating else self.img.dataobj
                self.data = np.asarray(raw, dtype=self.dtype).reshape(shape4(self.img.shape))
            nan = floating and bool(np.isnan(self.data).any())
        return nan if floating else False

    def read(self, sl: tuple[slice, ...], ch: slice | None = None) -> np.ndarray:
        ch = ch or slice(0, self.channels)
        shape = (*(s.stop - s.start for s in sl), ch.stop - ch.start)
        with _reading(self.uri):
            if self.data is not None:
                return np.asarray(self.data[(*sl, ch)])
            idx = (*sl[: min(self.nd, 3)], *((ch,) if self.nd >= 4 else ()), *([0] * (self.nd - 4)))
            block = np.asarray(self.img.dataobj[idx])
        return block.reshape(shape).astype(self.dtype, copy=False)


def shape4(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """A header shape as ``(X, Y, Z, C)``: missing spatial axes are 1, and so is C without a 4th axis."""
    s = (*shape[:3], *([1] * (3 - min(3, len(shape)))), shape[3] if len(shape) >= 4 else 1)
    return (int(s[0]), int(s[1]), int(s[2]), int(s[3]))


def _build_cache(src: VoxelSource, path: str, dest: Path) -> None:
    """Decompress a big .nii.gz once, slab by slab through the proxy (file kept open, reads only go
    forward, so the gzip stream is decoded once), into a chunked zarr store."""
    shape = shape4(src.img.shape)
    axis = 2 if shape[2] > 1 else 1  # slowest spatial axis: its slabs are contiguous bytes
    along = min(shape[axis], 16)
    plane = prod(shape[:axis]) * prod(shape[axis + 1 : 3]) * src.dtype.itemsize
    step = along * max(1, _SLAB_BYTES // max(1, plane * along))
    chunks = [min(n, 128) for n in shape[:3]] + [1]
    chunks[axis] = along
    tmp = temp_sibling(dest)
    streaming = VoxelSource(src.uri, nib.load(path, keep_file_open=True))
    has_nan = False
    try:
        arr = zarr.create_array(
            store=str(tmp),
            shape=shape,
            dtype=src.dtype,
            chunks=tuple(chunks),
            compressors=fast_compressor(),
            fill_value=0,
        )
        for c in range(shape[3]):
            for a in range(0, shape[axis], step):
                sl = [slice(0, n) for n in shape[:3]]
                sl[axis] = slice(a, min(a + step, shape[axis]))
                block = streaming.read(tuple(sl), slice(c, c + 1))
                has_nan = has_nan or (src.dtype.kind == "f" and bool(np.isnan(block).any()))
                arr[(*sl, slice(c, c + 1))] = block
        arr.attrs.update({"source": src.uri, "has_nan": has_nan})
        try:
            os.rename(tmp, dest)
        except OSError:
            if not dest.exists():
                raise
            # another worker built the same cache first: use theirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cached(src: VoxelSource, path: str, cache_dir: Path) -> tuple[zarr.Array, bool]:
    st = os.stat(path)
    tag = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{src.dtype.str}"
    name = posixpath.basename(path).split(".nii")[0]
    dest = cache_dir / f"{name}-{hashlib.sha1(tag.encode()).hexdigest()[:16]}.zarr"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        _build_cache(src, path, dest)
    arr = zarr.open_array(store=str(dest), mode="r")
    return arr, bool(arr.attrs.get("has_nan", False))
