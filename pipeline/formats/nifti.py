"""NIfTI volumes in, NIfTI labels out, on exactly the input's voxel grid.

The engine works in one orientation (the bundle's, default RAS) and optionally one spacing; the file
keeps its own. Reorientation is a pure flip/permutation of voxel axes (no interpolation), so
``to_native_labels`` inverts it exactly, and written labels overlay the input voxel-for-voxel in
ITK-SNAP, 3D Slicer and napari.

Axis rule: a file's voxel axes are padded to 3 (a 2-D file is ``(X, Y, 1)``) and reoriented. A file
with only two dims in its header is exposed as ``(C, a, b)``: its missing axis is dropped after
reorientation, and ``meta.orientation`` names the two remaining axes. A file with an explicit Z of 1
stays 3-D. A 4-D file's last axis holds the channels.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import posixpath
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import zarr
from nibabel import orientations as nio
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from pipeline.atomic import atomic_path, temp_sibling
from pipeline.core.box import Box
from pipeline.errors import ConfigError, FormatError, InputError, TilewiseError
from pipeline.formats.local import missing_reason
from pipeline.formats.scene import VolumeMeta
from pipeline.formats.zarr import class_rgba, fast_compressor, storage_options

MAX_VOXELS = 2**34  # beyond this a header is far likelier corrupt than real
_MAX_GZIP_RATIO = 1100  # deflate's best case is ~1032:1, so a .nii.gz cannot hold more than this
CACHE_THRESHOLD_BYTES = 256 * 2**20
_SLAB_BYTES = 64 * 2**20
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<idx>\d{4})(?P<ext>\.nii(?:\.gz)?)$")
# Header fields that define the voxel-to-world mapping: copied verbatim so the affine is bit-identical.
_GRID_FIELDS = (
    "qform_code",
    "sform_code",
    "quatern_b",
    "quatern_c",
    "quatern_d",
    "qoffset_x",
    "qoffset_y",
    "qoffset_z",
    "srow_x",
    "srow_y",
    "srow_z",
    "pixdim",
    "xyzt_units",
)
LABEL_INTENT = 1002  # NIFTI_INTENT_LABEL
_SPACES = re.compile(r"\s+")
_ITKSNAP_HEADER = f"""{"#" * 48}
# ITK-SnAP Label Description File
# File format:
# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL
# Fields:
#    IDX:   Zero-based index
#    -R-:   Red color component (0..255)
#    -G-:   Green color component (0..255)
#    -B-:   Blue color component (0..255)
#    -A-:   Label transparency (0.00 .. 1.00)
#    VIS:   Label visibility (0 or 1)
#    MSH:   Label mesh visibility (0 or 1)
#  LABEL:   Label description
{"#" * 48}"""


def group_channel_files(paths: Iterable[str | os.PathLike[str]]) -> list[list[str]]:
    """Group nnU-Net channel files (``CASE_0000.nii.gz``, ``CASE_0001.nii.gz`` ...) into one scene each.

    A case is grouped only when its suffixes run 0000, 0001, ... without a gap, so a lone
    ``scan_2019.nii.gz`` stays its own scene; every other NIfTI is a single-file scene.
    """
    cases: dict[tuple[str, str, str], dict[int, str]] = {}
    groups: list[list[str]] = []
    for p in map(str, paths):
        m = _CHANNEL_FILE.match(posixpath.basename(p))
        if m:
            cases.setdefault((posixpath.dirname(p), m["case"], m["ext"]), {})[int(m["idx"])] = p
        else:
            groups.append([p])
    for members in cases.values():
        idx = sorted(members)
        if idx == list(range(len(idx))):
            groups.append([members[i] for i in idx])
        else:
            groups.extend([members[i]] for i in idx)
    return sorted(groups)


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


class _Source:
    """One file's voxels as ``(X, Y, Z, C)`` in file order: via the proxy, memory or a zarr cache."""

    def __init__(self, uri: str, img: nib.Nifti1Image, data: Any = None) -> None:
        self.uri, self.img, self.data = uri, img, data
        self.nd = len(img.shape)
        self.channels = img.shape[3] if self.nd >= 4 else 1
        self.dtype = _file_dtype(img)

    def read(self, sl: tuple[slice, ...], ch: slice | None = None) -> np.ndarray:
        ch = ch or slice(0, self.channels)
        shape = (*(s.stop - s.start for s in sl), ch.stop - ch.start)
        with _reading(self.uri):
            if self.data is not None:
                return np.asarray(self.data[(*sl, ch)])
            idx = (*sl[: min(self.nd, 3)], *((ch,) if self.nd >= 4 else ()), *([0] * (self.nd - 4)))
            block = np.asarray(self.img.dataobj[idx])
        return block.reshape(shape).astype(self.dtype, copy=False)


def _shape4(shape: Sequence[int]) -> tuple[int, int, int, int]:
    s = (*shape[:3], *([1] * (3 - min(3, len(shape)))), shape[3] if len(shape) >= 4 else 1)
    return (int(s[0]), int(s[1]), int(s[2]), int(s[3]))


def _build_cache(src: _Source, path: str, dest: Path) -> None:
    """Decompress a big .nii.gz once, slab by slab through the proxy (file kept open, reads only go
    forward, so the gzip stream is decoded once), into a chunked zarr store."""
    shape = _shape4(src.img.shape)
    axis = 2 if shape[2] > 1 else 1  # slowest spatial axis: its slabs are contiguous bytes
    along = min(shape[axis], 16)
    plane = prod(shape[:axis]) * prod(shape[axis + 1 : 3]) * src.dtype.itemsize
    step = along * max(1, _SLAB_BYTES // max(1, plane * along))
    chunks = [min(n, 128) for n in shape[:3]] + [1]
    chunks[axis] = along
    tmp = temp_sibling(dest)
    streaming = _Source(src.uri, nib.load(path, keep_file_open=True))
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


def _cached(src: _Source, path: str, cache_dir: Path) -> tuple[zarr.Array, bool]:
    st = os.stat(path)
    tag = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{src.dtype.str}"
    name = posixpath.basename(path).split(".nii")[0]
    dest = cache_dir / f"{name}-{hashlib.sha1(tag.encode()).hexdigest()[:16]}.zarr"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        _build_cache(src, path, dest)
    arr = zarr.open_array(store=str(dest), mode="r")
    return arr, bool(arr.attrs.get("has_nan", False))


def _src_coords(a: int, b: int, f: float) -> np.ndarray:
    """Source coordinates of target voxels ``a..b-1`` when both grids span the same extent."""
    return (np.arange(a, b) + 0.5) * f - 0.5


def _resample_axis(x: np.ndarray, axis: int, s: np.ndarray, order: int) -> np.ndarray:
    """Separable resampling along one axis (order 0: nearest, 1: linear), edges clamped."""
    n = x.shape[axis]
    s = np.clip(s, 0, n - 1)
    if order == 0:
        return np.take(x, np.floor(s + 0.5).astype(np.intp), axis=axis)
    i0 = np.floor(s).astype(np.intp)
    w = (s - i0).astype(np.float32).reshape([-1 if d == axis else 1 for d in range(x.ndim)])
    x = x.astype(np.float32, copy=False)
    return np.take(x, i0, axis=axis) * (1 - w) + np.take(x, np.minimum(i0 + 1, n - 1), axis=axis) * w


class NiftiScene:
    """A NIfTI volume or channel set as ``(C, *spatial)`` in the engine's orientation and spacing."""

    def __init__(
        self,
        uris: list[str],
        orientation: str = "RAS",
        target_spacing: Sequence[float] | None = None,
        order: int = 1,
        cache_dir: str | None = None,
        cache_threshold_bytes: int = CACHE_THRESHOLD_BYTES,
    ) -> None:
        self._args = (uris, orientation, target_spacing, order, cache_dir, cache_threshold_bytes)
        self.uri, self.files = uris[0], list(uris)
        cache = Path(cache_dir or os.environ.get("TILEWISE_CACHE_DIR") or tempfile.gettempdir())
        cache = cache / "tilewise-nifti"
        self._sources: list[_Source] = []
        nans: list[bool | None] = []  # per file: NaNs present? None = unknown (read in place)
        for uri in uris:
            path = _localize(uri, cache)
            src = _Source(uri, _load(path, uri))
            if self._sources:
                self._check_same_grid(self._sources[0], src)
            floating = src.dtype.kind == "f"
            nan: bool | None = None
            size = prod(src.img.shape) * src.img.get_data_dtype().itemsize
            if _is_gz(path) and size > cache_threshold_bytes:
                src.data, nan = _cached(src, path, cache)
            elif _is_gz(path):
                with _reading(uri):
                    raw = src.img.get_fdata(dtype=src.dtype) if floating else src.img.dataobj
                    src.data = np.asarray(raw, dtype=src.dtype).reshape(_shape4(src.img.shape))
                nan = floating and bool(np.isnan(src.data).any())
            nans.append(nan if floating else False)
            self._sources.append(src)
        self._nan_free = all(n is False for n in nans)
        img0 = self._sources[0].img
        self.native_shape: tuple[int, ...] = tuple(int(n) for n in img0.shape[: min(3, len(img0.shape))])
        self._pad3 = _shape4(img0.shape)[:3]
        try:
            target = nio.axcodes2ornt(tuple(orientation.upper()))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"bad orientation {orientation!r}: {exc}") from exc
        try:
            affine = np.asarray(img0.affine, dtype=np.float64)
            if not np.isfinite(affine).all():
                raise ValueError("it holds NaN or infinity")
            tr = nio.ornt_transform(nio.io_orientation(affine), target)
        except (ValueError, TypeError) as exc:
            raise FormatError(f"unusable voxel-to-world affine in the header: {exc}", path=self.uri) from exc
        self._perm, self._flip = [0, 0, 0], [False, False, False]
        for i, (e, d) in enumerate(tr):
            self._perm[int(e)], self._flip[int(e)] = i, d < 0
        self._sq = self._perm.index(2) if len(self.native_shape) == 2 else None
        keep = [e for e in range(3) if e != self._sq]
        zooms = np.linalg.norm(np.asarray(img0.affine)[:3, :3], axis=0)
        self._native = tuple(self._pad3[self._perm[e]] for e in keep)
        native_spacing = tuple(float(zooms[self._perm[e]]) for e in keep)
        codes = "".join(orientation.upper()[e] for e in keep)
        self._factor: tuple[float, ...] | None = None
        spatial, spacing = self._native, native_spacing
        self._order = order
        if target_spacing is not None:
            if len(target_spacing) != len(spatial):
                raise ConfigError(f"target_spacing {tuple(target_spacing)} has not {len(spatial)} values")
            spatial = tuple(
                max(1, round(n * s / t)) for n, s, t in zip(spatial, spacing, target_spacing, strict=True)
            )
            if spatial != self._native:
                self._factor = tuple(n / m for n, m in zip(self._native, spatial, strict=True))
                spacing = tuple(s * f for s, f in zip(native_spacing, self._factor, strict=True))
        dtype = np.result_type(*(s.dtype for s in self._sources))
        self.dtype = np.dtype(np.float32) if self._factor and order > 0 and dtype.kind != "f" else dtype
        self.channels = sum(s.channels for s in self._sources)
        self.shape: tuple[int, ...] = (self.channels, *spatial)
        self.meta = VolumeMeta(
            affine=np.asarray(img0.affine), spacing=spacing, header=img0.header, orientation=codes
        )
        self.native_spacing = native_spacing

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as "reopen": a Dask worker reopens the file (and finds the cache) itself."""
        return (NiftiScene, self._args)

    @staticmethod
    def _check_same_grid(first: _Source, other: _Source) -> None:
        a, b = first.img, other.img
        if a.shape[:3] != b.shape[:3] or not np.allclose(a.affine, b.affine, atol=1e-4):
            raise InputError(
                f"channel files differ in shape or affine: {first.uri} {a.shape} vs {other.uri} {b.shape}",
                path=other.uri,
            )

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    def _read_native(self, box: Box, fill: float) -> np.ndarray:
        """Read ``box`` of the reoriented native grid: the file region, transposed and flipped."""
        start, stop = list(box.start), list(box.stop)
        if self._sq is not None:
            start.insert(self._sq, 0)
            stop.insert(self._sq, 1)
        full = Box(tuple(start), tuple(stop))
        out = np.full((self.channels, *full.shape), fill, dtype=self.dtype)
        inside = full.intersect(Box.from_shape([self._pad3[p] for p in self._perm]))
        if not inside.empty:
            sl: list[slice] = [slice(0)] * 3
            for e, (a, b) in enumerate(zip(inside.start, inside.stop, strict=True)):
                n = self._pad3[self._perm[e]]
                sl[self._perm[e]] = slice(n - b, n - a) if self._flip[e] else slice(a, b)
            block = np.concatenate([s.read(tuple(sl)) for s in self._sources], axis=3)
            block = np.transpose(block, (3, *self._perm))
            flips = [e + 1 for e in range(3) if self._flip[e]]
            out[(slice(None), *inside.slices(full.start))] = np.flip(block, flips) if flips else block
        return out if self._sq is None else out.squeeze(1 + self._sq)

    def read(self, box: Box, fill: float = 0.0) -> np.ndarray:
        """Voxels of ``box`` as ``(C, *box.shape)``; resampled on the fly when a spacing was asked."""
        if self._factor is None:
            return self._read_native(box, fill)
        out = np.full((self.channels, *box.shape), fill, dtype=self.dtype)
        inside = box.intersect(Box.from_shape(self.spatial_shape))
        if inside.empty:
            return out
        coords = [
            np.clip(_src_coords(a, b, f), 0, n - 1)
            for a, b, f, n in zip(inside.start, inside.stop, self._factor, self._native, strict=True)
        ]
        lo = [int(np.floor(c[0])) for c in coords]
        hi = [min(int(np.floor(c[-1])) + 2, n) for c, n in zip(coords, self._native, strict=True)]
        x = self._read_native(Box(tuple(lo), tuple(hi)), fill)
        for axis, (c, a) in enumerate(zip(coords, lo, strict=True)):
            x = _resample_axis(x, axis + 1, c - a, self._order)
        out[(slice(None), *inside.slices(box.start))] = x
        return out

    def read_nodata(self, box: Box) -> np.ndarray | None:
        """NaN voxels (and outside) for float data that has any; ``None`` otherwise."""
        if self.dtype.kind != "f" or self._nan_free:
            return None
        return np.isnan(self.read(box, fill=np.nan)).any(axis=0)

    def _to_native(self, x: np.ndarray, lead: int, order: int) -> np.ndarray:
        if x.shape[lead:] != self.spatial_shape:
            raise InputError(f"array shape {x.shape} does not match the scene {self.shape}", path=self.uri)
        if self._factor is not None:
            for axis, (n, f, m) in enumerate(
                zip(self._native, self._factor, self.spatial_shape, strict=True)
            ):
                x = _resample_axis(x, lead + axis, np.clip(_src_coords(0, n, 1 / f), 0, m - 1), order)
        if self._sq is not None:
            x = np.expand_dims(x, lead + self._sq)
        flips = [lead + e for e in range(3) if self._flip[e]]
        x = np.flip(x, flips) if flips else x
        inv = [self._perm.index(i) for i in range(3)]
        x = np.transpose(x, (*range(lead), *(lead + e for e in inv)))
        return np.ascontiguousarray(x.squeeze(lead + 2) if len(self.native_shape) == 2 else x)

    def to_native_labels(self, labels_engine: np.ndarray) -> np.ndarray:
        """Labels on the engine grid back to the file's voxel grid (nearest, then exact un-reorient)."""
        return self._to_native(np.asarray(labels_engine), 0, 0)

    def to_native_scores(self, scores_engine: np.ndarray) -> np.ndarray:
        """``(K, *spatial)`` scores back to ``(K, *native)`` on the file grid (linear where resampled)."""
        return self._to_native(np.asarray(scores_engine), 1, 1)

    def close(self) -> None:
        for s in self._sources:
            s.data = None


def open_nifti(
    uri: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    orientation: str = "RAS",
    target_spacing: Sequence[float] | None = None,
    cache_dir: str | None = None,
    order: int = 1,
    cache_threshold_bytes: int = CACHE_THRESHOLD_BYTES,
) -> NiftiScene:
    """Open a NIfTI file, or a list of channel files sharing one grid, as a lazily read scene.

    ``order`` is the interpolation used when ``target_spacing`` resamples (1 for images, 0 for labels).
    A ``.nii.gz`` bigger than ``cache_threshold_bytes`` uncompressed is decompressed once into a zarr
    cache under ``cache_dir`` (gzip cannot seek); smaller ones are loaded once and kept.
    """
    uris = [os.fspath(uri)] if isinstance(uri, str | os.PathLike) else [os.fspath(u) for u in uri]
    if not uris:
        raise InputError("no NIfTI file given")
    if order not in (0, 1):
        raise ConfigError(f"order must be 0 or 1, not {order}")
    return NiftiScene(uris, orientation, target_spacing, order, cache_dir, cache_threshold_bytes)


# ----------------------------------------------------------------------------------------- writers
@dataclass(frozen=True)
class LabelFiles:
    image: Path
    ctbl: Path | None = None
    itksnap: Path | None = None


def _stem(dest: Path) -> str:
    return dest.name[: -len(".nii.gz")] if dest.name.lower().endswith(".nii.gz") else dest.stem


def _image_like(scene: NiftiScene, data: np.ndarray, dtype: np.dtype) -> nib.Nifti1Image:
    """New data under a fresh header carrying the input's grid fields verbatim (codes included).

    NIfTI-2 when the input is NIfTI-2 or a dim exceeds NIfTI-1's int16 limit."""
    src = scene.meta.header
    big = isinstance(src, nib.Nifti2Header) or max(data.shape) > 32767
    cls = nib.Nifti2Image if big else nib.Nifti1Image
    hdr = cls.header_class()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(dtype)
    for key in _GRID_FIELDS:
        hdr[key] = src[key]
    pixdim = hdr["pixdim"].copy()
    pixdim[data.ndim + 1 :] = 1.0  # grid spacing kept; the time/channel step of a 4-D input is not ours
    hdr["pixdim"] = pixdim
    return cls(data, None, header=hdr, dtype=dtype)


def _save(img: nib.Nifti1Image, dest: Path, overwrite: bool) -> None:
    """Temp then rename; gzip chosen by the final name (nibabel would judge the temp name)."""
    with atomic_path(dest, overwrite=overwrite) as tmp, open(tmp, "wb") as raw:
        stream: Any = (
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) if _is_gz(str(dest)) else raw
        )
        img.to_file_map({"image": nib.FileHolder(fileobj=stream)})
        stream.close()


def _check_dest(dest: str | os.PathLike[str]) -> Path:
    path = Path(dest)
    if not (path.name.lower().endswith(".nii") or _is_gz(path.name)):
        raise ConfigError(f"NIfTI output must end in .nii or .nii.gz: {path}")
    return path


def write_nifti_labels(
    labels_native: np.ndarray,
    dest: str | os.PathLike[str],
    *,
    scene: NiftiScene,
    class_names: Sequence[str],
    class_colors: Sequence[Any] | None = None,
    overwrite: bool = False,
    tables: bool = True,
) -> LabelFiles:
    """uint8 labels on the input grid (bit-identical affine, qform/sform and codes, intent LABEL),
    plus a 3D Slicer ``<name>.ctbl`` and an ITK-SNAP ``<name>_itksnap.txt`` label table beside it."""
    path = _check_dest(dest)
    labels = np.asarray(labels_native)
    if labels.shape != scene.native_shape:
        raise InputError(f"labels {labels.shape} are not on the grid {scene.native_shape}", path=str(path))
    img = _image_like(scene, labels.astype(np.uint8, copy=False), np.dtype(np.uint8))
    img.header.set_intent(LABEL_INTENT)
    img.header["cal_min"], img.header["cal_max"] = 0, max(1, len(class_names) - 1)
    img.header["descrip"] = b"tilewise labels"
    _save(img, path, overwrite)
    if not tables:
        return LabelFiles(path)
    colors = class_rgba(class_names, class_colors)
    ctbl, snap = path.with_name(f"{_stem(path)}.ctbl"), path.with_name(f"{_stem(path)}_itksnap.txt")
    _write_text(ctbl, format_ctbl(class_names, colors, ctbl.name), overwrite)
    _write_text(snap, format_itksnap_labels(class_names, colors), overwrite)
    return LabelFiles(path, ctbl, snap)


def write_nifti_probabilities(
    probs_native: np.ndarray,
    dest: str | os.PathLike[str],
    *,
    scene: NiftiScene,
    dtype: Any = np.uint8,
    overwrite: bool = False,
) -> Path:
    """``(K, *native)`` probabilities as a 4-D NIfTI, classes on the last axis, on the input grid.

    uint8 stores round(p * 255) with ``scl_slope = 1/255``, so viewers and nibabel read p back.
    """
    path = _check_dest(dest)
    probs = np.moveaxis(np.asarray(probs_native), 0, -1)
    if probs.shape[:-1] != scene.native_shape:
        raise InputError(f"probabilities {probs.shape} not on the grid {scene.native_shape}", path=str(path))
    if len(scene.native_shape) == 2:
        probs = probs[:, :, None, :]
    out = np.dtype(dtype)
    if out == np.uint8:
        data = np.rint(np.clip(probs, 0, 1) * 255).astype(np.uint8)
    elif out == np.float32:
        data = probs.astype(np.float32, copy=False)
    else:
        raise ConfigError(f"probability dtype must be uint8 or float32, not {out}")
    img = _image_like(scene, data, out)
    if out == np.uint8:
        img.header.set_slope_inter(1 / 255, 0)
    img.header["intent_name"] = b"class probs"
    _save(img, path, overwrite)
    return path


# ------------------------------------------------------------------------------------ label tables
def _write_text(path: Path, text: str, overwrite: bool) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")


def format_ctbl(names: Sequence[str], colors: Sequence[tuple[int, int, int, int]], title: str = "") -> str:
    """3D Slicer color table: ``index name R G B A`` (no spaces in names; index 0 transparent)."""
    rows = [f"# Color table file {title}".rstrip(), f"# {len(names)} values"]
    for i, (n, (r, g, b, a)) in enumerate(zip(names, colors, strict=True)):
        rows.append(f"{i} {_SPACES.sub('_', n.strip()) or f'label_{i}'} {r} {g} {b} {a if i else 0}")
    return "\n".join(rows) + "\n"


def format_itksnap_labels(names: Sequence[str], colors: Sequence[tuple[int, int, int, int]]) -> str:
    """ITK-SNAP Label Description File: ``IDX -R- -G- -B- -A-- VIS MSH LABEL``, alpha 0..1, 0 clear."""
    head = _ITKSNAP_HEADER.splitlines()
    rows = []
    for i, (n, (r, g, b, a)) in enumerate(zip(names, colors, strict=True)):
        vis, a = (1, a) if i else (0, 0)
        rows.append(
            f'{i:5d} {r:5d} {g:4d} {b:4d} {a / 255:8.4g} {vis:2d} {vis:2d}    "{n.replace(chr(34), "")}"'
        )
    return "\n".join(head + rows) + "\n"


def read_ctbl(path: str | os.PathLike[str]) -> dict[int, tuple[str, tuple[int, int, int, int]]]:
    """Parse a Slicer ``.ctbl`` back to ``{index: (name, rgba)}``."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            i, name, *rgba = line.split()
            out[int(i)] = (name, (int(rgba[0]), int(rgba[1]), int(rgba[2]), int(rgba[3])))
    return out


def read_itksnap_labels(path: str | os.PathLike[str]) -> dict[int, tuple[str, tuple[int, int, int, float]]]:
    """Parse an ITK-SNAP label description file back to ``{index: (name, (r, g, b, alpha))}``."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            fields, name = line.split('"', 1)[0].split(), line.split('"')[1]
            out[int(fields[0])] = (name, (int(fields[1]), int(fields[2]), int(fields[3]), float(fields[4])))
    return out
