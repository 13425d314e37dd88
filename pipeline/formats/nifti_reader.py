"""NIfTI volumes in, on exactly the input's voxel grid, in the engine's orientation and spacing.

The engine works in one orientation (the bundle's, default RAS, or ``native``: the file's own voxel
axes, as nnU-Net's models see them) and optionally one spacing; the file
keeps its own. Reorientation is a pure flip/permutation of voxel axes (no interpolation), so
``to_native_labels`` inverts it exactly, and written labels overlay the input voxel-for-voxel in
ITK-SNAP, 3D Slicer and napari.

Axis rule: a file's voxel axes are padded to 3 (a 2-D file is ``(X, Y, 1)``) and reoriented. A file
with only two dims in its header is exposed as ``(C, a, b)``: its missing axis is dropped after
reorientation, and ``meta.orientation`` names the two remaining axes. A file with an explicit Z of 1
stays 3-D. A 4-D file's last axis holds the channels.
"""

from __future__ import annotations

import os
import posixpath
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from nibabel import orientations as nio

from pipeline.core.box import Box
from pipeline.errors import ConfigError, FormatError, InputError
from pipeline.formats.nifti_files import CACHE_THRESHOLD_BYTES, VoxelSource, shape4
from pipeline.formats.scene import VolumeMeta
from pipeline.formats.spline import (
    NnUNetResampling,
    needed,
    new_shape,
    resample_axis,
    resample_region,
    separate_axis,
)

NATIVE = "NATIVE"  # orientation: keep the file's voxel axes as they are
# how a target spacing lays out the engine grid: both grids spanning the same extent (nnU-Net's, and
# tilewise's default), or MONAI's ``Spacing`` (first voxel centres aligned, the step exactly the ratio)
SPACING_GRIDS = ("extent", "monai")
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<idx>\d{4})(?P<ext>\.nii(?:\.gz)?)$")


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
        spacing_grid: str = "extent",
        crop: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
        resampling: tuple[Any, ...] | None = None,
    ) -> None:
        self._args = (
            uris,
            orientation,
            target_spacing,
            order,
            cache_dir,
            cache_threshold_bytes,
            spacing_grid,
            crop,
            resampling,
        )
        self.uri, self.files = uris[0], list(uris)
        cache = Path(cache_dir or os.environ.get("TILEWISE_CACHE_DIR") or tempfile.gettempdir())
        cache = cache / "tilewise-nifti"
        self._sources: list[VoxelSource] = []
        nans: list[bool | None] = []  # per file: NaNs present? None = unknown (read in place)
        for uri in uris:
            src = VoxelSource.open(uri, cache)
            if self._sources:
                self._check_same_grid(self._sources[0], src)
            nans.append(src.prepare(cache, cache_threshold_bytes))
            self._sources.append(src)
        self._nan_free = all(n is False for n in nans)
        img0 = self._sources[0].img
        self.native_shape: tuple[int, ...] = tuple(int(n) for n in img0.shape[: min(3, len(img0.shape))])
        self._pad3 = shape4(img0.shape)[:3]
        try:
            affine = np.asarray(img0.affine, dtype=np.float64)
            if not np.isfinite(affine).all():
                raise ValueError("it holds NaN or infinity")
            own = nio.io_orientation(affine)
        except (ValueError, TypeError) as exc:
            raise FormatError(f"unusable voxel-to-world affine in the header: {exc}", path=self.uri) from exc
        try:
            if orientation.upper() == NATIVE:  # the file's own axes: no flip, no permutation
                orientation = "".join(nio.ornt2axcodes(own))
            tr_own = own
        except (ValueError, TypeError) as exc:  # an axis the affine leaves undetermined
            raise FormatError(f"unusable voxel-to-world affine in the header: {exc}", path=self.uri) from exc
        try:
            target = nio.axcodes2ornt(tuple(orientation.upper()))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"bad orientation {orientation!r}: {exc}") from exc
        try:
            tr = nio.ornt_transform(tr_own, target)
        except ValueError as exc:  # e.g. two voxel axes on one world axis, or one on none
            raise FormatError(f"unusable voxel-to-world affine in the header: {exc}", path=self.uri) from exc
        self._perm, self._flip = [0, 0, 0], [False, False, False]
        for i, (e, d) in enumerate(tr):
            self._perm[int(e)], self._flip[int(e)] = i, d < 0
        self._sq = self._perm.index(2) if len(self.native_shape) == 2 else None
        keep = [e for e in range(3) if e != self._sq]
        zooms = np.linalg.norm(np.asarray(img0.affine)[:3, :3], axis=0)
        self._uncropped = tuple(self._pad3[self._perm[e]] for e in keep)
        self.crop: Box | None = None  # the region of the reoriented native grid this scene shows
        if crop is not None:
            self.crop = Box(tuple(int(v) for v in crop[0]), tuple(int(v) for v in crop[1]))
            if self.crop.ndim != len(keep) or self.crop.empty or self.crop.intersect(
                Box.from_shape(self._uncropped)) != self.crop:  # fmt: skip
                raise ConfigError(f"crop {crop} does not lie inside the volume {self._uncropped}")
        self._native = self._uncropped if self.crop is None else self.crop.shape
        native_spacing = tuple(float(zooms[self._perm[e]]) for e in keep)
        codes = "".join(orientation.upper()[e] for e in keep)
        self._factor: tuple[float, ...] | None = None
        spatial, spacing = self._native, native_spacing
        self._order = order
        if spacing_grid not in SPACING_GRIDS:
            raise ConfigError(f"spacing_grid must be one of {', '.join(SPACING_GRIDS)}, not {spacing_grid!r}")
        self._monai = spacing_grid == "monai"
        self._nnunet = NnUNetResampling(*resampling) if resampling is not None else None
        self.separate_axis: int | None = None  # the axis resampled with order_z (nnU-Net), if any
        self._score_axis: int | None = None
        if target_spacing is not None:
            if len(target_spacing) != len(spatial):
                raise ConfigError(f"target_spacing {tuple(target_spacing)} has not {len(spatial)} values")
            pairs = list(zip(spatial, spacing, target_spacing, strict=True))
            if self._monai:  # MONAI's Spacing: first voxel centres aligned, the step exactly t / s
                spatial = tuple(max(1, int(np.round((n - 1) * s / t + 1.0))) for n, s, t in pairs)
                factor = tuple(t / s for _, s, t in pairs)
            elif self._nnunet is not None:  # nnU-Net's own rounding
                spatial = tuple(max(1, v) for v in new_shape(spatial, spacing, target_spacing))
                factor = tuple(n / m for n, m in zip(self._native, spatial, strict=True))
            else:  # both grids span the same extent
                spatial = tuple(max(1, round(n * s / t)) for n, s, t in pairs)
                factor = tuple(n / m for n, m in zip(self._native, spatial, strict=True))
            if spatial != self._native or (self._monai and any(f != 1.0 for f in factor)):
                self._factor = factor
                spacing = tuple(s * f for s, f in zip(native_spacing, self._factor, strict=True))
                if self._nnunet is not None:
                    r = self._nnunet
                    self.separate_axis = separate_axis(native_spacing, target_spacing, r.force_separate_z)
                    self._score_axis = separate_axis(target_spacing, native_spacing, r.score_force_separate_z)
        dtype = np.result_type(*(s.dtype for s in self._sources))
        floats = self._factor and (order > 0 or self._nnunet is not None)
        self.dtype = np.dtype(np.float32) if floats and dtype.kind != "f" else dtype
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
    def _check_same_grid(first: VoxelSource, other: VoxelSource) -> None:
        a, b = first.img, other.img
        if a.shape[:3] != b.shape[:3] or not np.allclose(a.affine, b.affine, atol=1e-4):
            raise InputError(
                f"channel files differ in shape or affine: {first.uri} {a.shape} vs {other.uri} {b.shape}",
                path=other.uri,
            )

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def resampled(self) -> bool:
        """Whether the engine grid differs from the file's (a target spacing resamples it)."""
        return self._factor is not None

    def unresampled(self) -> NiftiScene:
        """This scene (cropped alike) on its own voxel grid: where nnU-Net takes per-case statistics."""
        if self._factor is None:
            return self
        uris, orientation, _, order, cache_dir, threshold, grid, crop, _ = self._args
        return NiftiScene(uris, orientation, None, order, cache_dir, threshold, grid, crop)

    def _read_native(self, box: Box, fill: float) -> np.ndarray:
        """Read ``box`` of the reoriented native grid: the file region, transposed and flipped."""
        crop = self.crop or Box.from_shape(self._uncropped)
        start = [a + c for a, c in zip(box.start, crop.start, strict=True)]
        stop = [b + c for b, c in zip(box.stop, crop.start, strict=True)]
        lo, hi = list(crop.start), list(crop.stop)  # voxels outside the crop read as ``fill``
        if self._sq is not None:
            for v, at in ((start, 0), (stop, 1), (lo, 0), (hi, 1)):
                v.insert(self._sq, at)
        full = Box(tuple(start), tuple(stop))
        out = np.full((self.channels, *full.shape), fill, dtype=self.dtype)
        inside = full.intersect(Box(tuple(lo), tuple(hi)))
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

    def read(
        self,
        box: Box,
        fill: float = 0.0,
        prepare: Callable[[np.ndarray, Box], np.ndarray] | None = None,
        value_range: np.ndarray | None = None,
    ) -> np.ndarray:
        """Voxels of ``box`` as ``(C, *box.shape)``; resampled on the fly when a spacing was asked.

        With nnU-Net's resampling (:func:`~pipeline.formats.spline.resample_region`),
        ``prepare(native, native_box)`` (its normalisation) runs on the file's voxels before they are
        resampled, and cubic values are clipped to ``value_range`` as ``skimage`` clips them."""
        if self._factor is None:
            return self._read_native(box, fill)
        out = np.full((self.channels, *box.shape), fill, dtype=self.dtype)
        inside = box.intersect(Box.from_shape(self.spatial_shape))
        if inside.empty:
            return out
        if self._nnunet is not None:

            def native(region: Box) -> np.ndarray:
                x = self._read_native(region, fill)
                return x if prepare is None else prepare(x, region)

            x = resample_region(native, self._native, self._factor, inside, self._nnunet,
                                self.separate_axis, value_range)  # fmt: skip
            out[(slice(None), *inside.slices(box.start))] = x
            return out
        coords = [
            np.clip(self._coords(a, b, f), 0, n - 1)
            for a, b, f, n in zip(inside.start, inside.stop, self._factor, self._native, strict=True)
        ]
        lo = [int(np.floor(c[0])) for c in coords]
        hi = [min(int(np.floor(c[-1])) + 2, n) for c, n in zip(coords, self._native, strict=True)]
        x = self._read_native(Box(tuple(lo), tuple(hi)), fill)
        for axis, (c, a) in enumerate(zip(coords, lo, strict=True)):
            x = _resample_axis(x, axis + 1, c - a, self._order)
        out[(slice(None), *inside.slices(box.start))] = x
        return out

    def _coords(self, a: int, b: int, f: float) -> np.ndarray:
        """Source coordinates of target voxels ``a..b-1`` at step ``f`` under the spacing grid rule."""
        return np.arange(a, b) * f if self._monai else _src_coords(a, b, f)

    def read_nodata(self, box: Box) -> np.ndarray | None:
        """NaN voxels (and outside) for float data that has any; ``None`` otherwise."""
        if self.dtype.kind != "f" or self._nan_free:
            return None
        return np.isnan(self.read(box, fill=np.nan)).any(axis=0)

    def _back(
        self, x: np.ndarray, lead: int, axis: int, span: tuple[int, int], lo: int, order: int
    ) -> np.ndarray:
        """Engine-grid values along ``axis`` (``x`` holds engine indices ``lo..``) at the file's voxels
        ``span``: nnU-Net's score orders for scores with its resampling, else ``order``."""
        assert self._factor is not None
        f, m = self._factor[axis], self.spatial_shape[axis]
        if self._nnunet is not None and lead:  # nnU-Net's export of logits/probabilities
            r = self._nnunet
            o = r.score_order_z if axis == self._score_axis else r.score_order
            return resample_axis(x, lead + axis, _src_coords(*span, 1 / f), o, lo, m)
        c = np.clip(self._coords(*span, 1 / f), 0, m - 1)
        return _resample_axis(x, lead + axis, c - lo, order)

    def _to_native(
        self,
        x: np.ndarray,
        lead: int,
        order: int,
        activation: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        if x.shape[lead:] != self.spatial_shape:
            raise InputError(f"array shape {x.shape} does not match the scene {self.shape}", path=self.uri)
        if self._factor is not None:
            x = self._scores_in(x) if lead else x
            for axis, n in enumerate(self._native):
                x = self._back(x, lead, axis, (0, n), 0, order)
            x = self._scores_out(x) if lead else x
        if activation is not None:
            x = activation(x)
        return self._restore(x, lead)

    @property
    def _half_scores(self) -> bool:
        """Whether scores go back as nnU-Net's export sends them: its float16 logits resized in float64
        (``_scores_in``), the result stored as float16 (``_scores_out``)."""
        return self._nnunet is not None and self._nnunet.score_dtype == "float16"

    def _scores_in(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64) if self._half_scores else x

    def _scores_out(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float16).astype(np.float32) if self._half_scores else x

    def _restore(self, x: np.ndarray, lead: int) -> np.ndarray:
        """The cropped engine-oriented array on the file's grid: crop padded back, axes un-reoriented."""
        if self.crop is not None:  # nnU-Net's export: zeros outside the crop (background scores 1)
            full = np.zeros((*x.shape[:lead], *self._uncropped), x.dtype)
            if lead:
                full[0] = 1
            full[(*(slice(None),) * lead, *self.crop.slices())] = x
            x = full
        if self._sq is not None:
            x = np.expand_dims(x, lead + self._sq)
        flips = [lead + e for e in range(3) if self._flip[e]]
        x = np.flip(x, flips) if flips else x
        inv = [self._perm.index(i) for i in range(3)]
        x = np.transpose(x, (*range(lead), *(lead + e for e in inv)))
        return np.ascontiguousarray(x.squeeze(lead + 2) if len(self.native_shape) == 2 else x)

    def to_native_argmax(
        self,
        scores: Any,
        slab: int = 8,
        activation: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        """The argmax of :meth:`to_native_scores` as uint8 labels, ``slab`` file voxels along the first
        axis at a time: holds one slab of ``scores`` (any array a slice reads, e.g. Zarr), not all.
        ``activation`` runs on each slab once resampled (a sigmoid saturates: its argmax can differ)."""
        act = activation or (lambda x: x)
        if tuple(scores.shape[1:]) != self.spatial_shape:
            raise InputError(
                f"array shape {scores.shape} does not match the scene {self.shape}", path=self.uri
            )
        if self._factor is None:
            return self._restore(act(np.array(scores[...], np.float32)).argmax(axis=0).astype(np.uint8), 0)
        n0, m0 = self._native[0], self.spatial_shape[0]
        labels = np.empty(self._native, np.uint8)
        for a in range(0, n0, slab):
            b = min(a + slab, n0)
            c = self._coords(a, b, 1 / self._factor[0])
            lo, hi = needed(np.clip(c, 0, m0 - 1), 1)
            x = self._back(self._scores_in(np.asarray(scores[:, lo : min(hi, m0)])), 1, 0, (a, b), lo, 1)
            for axis in range(1, len(self._native)):
                x = self._back(x, 1, axis, (0, self._native[axis]), 0, 1)
            labels[a:b] = act(self._scores_out(x)).argmax(axis=0)
        return self._restore(labels, 0)

    def to_native_labels(self, labels_engine: np.ndarray) -> np.ndarray:
        """Labels on the engine grid back to the file's voxel grid (nearest, then exact un-reorient)."""
        return self._to_native(np.asarray(labels_engine), 0, 0)

    def to_native_scores(
        self, scores_engine: np.ndarray, activation: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> np.ndarray:
        """``(K, *spatial)`` scores back to ``(K, *native)`` on the file grid (linear where resampled;
        nnU-Net's score orders with its resampling); ``activation`` runs after resampling, before the
        crop is padded back (as nnU-Net resamples logits, then takes their softmax)."""
        return self._to_native(np.asarray(scores_engine), 1, 1, activation)

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
    spacing_grid: str = "extent",
    crop: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
    resampling: tuple[Any, ...] | None = None,
) -> NiftiScene:
    """Open a NIfTI file, or a list of channel files sharing one grid, as a lazily read scene.

    ``order`` is the interpolation used when ``target_spacing`` resamples (1 for images, 0 for labels);
    ``spacing_grid`` is how the resampled grid is laid out (``SPACING_GRIDS``).
    A ``.nii.gz`` bigger than ``cache_threshold_bytes`` uncompressed is decompressed once into a zarr
    cache under ``cache_dir`` (gzip cannot seek); smaller ones are loaded once and kept. ``crop``
    (start, stop) shows only that region of the reoriented voxel grid (before any resampling), as
    nnU-Net crops a case to its non-zero box; labels and scores map back padded with background.
    ``resampling`` (a :class:`~pipeline.formats.spline.NnUNetResampling` as a tuple) resamples as
    nnU-Net does: its shape rounding, cubic splines, a separate anisotropic axis, scores back at its
    orders.
    """
    uris = [os.fspath(uri)] if isinstance(uri, str | os.PathLike) else [os.fspath(u) for u in uri]
    if not uris:
        raise InputError("no NIfTI file given")
    if order not in (0, 1):
        raise ConfigError(f"order must be 0 or 1, not {order}")
    if resampling is not None:
        resampling = tuple(NnUNetResampling(*resampling))
    return NiftiScene(uris, orientation, target_spacing, order, cache_dir, cache_threshold_bytes,
                      spacing_grid, crop, resampling)  # fmt: skip
