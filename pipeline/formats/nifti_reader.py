"""NIfTI volumes in, on exactly the input's voxel grid, in the engine's orientation and spacing.

The engine works in one orientation (the bundle's, default RAS, or ``native``: the file's own voxel
axes, as nnU-Net's models see them) and optionally one spacing (:mod:`pipeline.formats.nifti_grid`
resamples, both ways); the file keeps its own. Reorientation is a pure flip/permutation of voxel axes
(no interpolation), so ``to_native_labels`` inverts it exactly, and written labels overlay the input
voxel-for-voxel in ITK-SNAP, 3D Slicer and napari.

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
from pipeline.formats.nifti_grid import SPACING_GRIDS, SpacingGrid
from pipeline.formats.scene import VolumeMeta
from pipeline.formats.spline import NnUNetResampling

NATIVE = "NATIVE"  # orientation: keep the file's voxel axes as they are
__all__ = ["NATIVE", "SPACING_GRIDS", "NiftiScene", "group_channel_files", "open_nifti"]
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
        self._grid: SpacingGrid | None = None  # the engine grid, when a target spacing resamples
        spatial, spacing = self._native, native_spacing
        if target_spacing is not None:
            nnunet = NnUNetResampling(*resampling) if resampling is not None else None
            self._grid = SpacingGrid.build(self._native, native_spacing, target_spacing, order, spacing_grid,
                                           nnunet)  # fmt: skip
            if self._grid is not None:
                spatial, spacing = self._grid.shape, self._grid.spacing(native_spacing)
        elif spacing_grid not in SPACING_GRIDS:
            raise ConfigError(f"spacing_grid must be one of {', '.join(SPACING_GRIDS)}, not {spacing_grid!r}")
        # the axis nnU-Net resamples with order_z, if any (its per-slice clip range follows it)
        self.separate_axis: int | None = None if self._grid is None else self._grid.separate_axis
        dtype = np.result_type(*(s.dtype for s in self._sources))
        floats = self._grid is not None and (order > 0 or self._grid.nnunet is not None)
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
        return self._grid is not None

    def unresampled(self) -> NiftiScene:
        """This scene (cropped alike) on its own voxel grid: where nnU-Net takes per-case statistics."""
        if self._grid is None:
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
        if self._grid is None:
            return self._read_native(box, fill)
        out = np.full((self.channels, *box.shape), fill, dtype=self.dtype)
        inside = box.intersect(Box.from_shape(self.spatial_shape))
        if not inside.empty:
            x = self._grid.read(lambda region: self._read_native(region, fill), inside, prepare, value_range)
            out[(slice(None), *inside.slices(box.start))] = x
        return out

    def read_nodata(self, box: Box) -> np.ndarray | None:
        """NaN voxels (and outside) for float data that has any; ``None`` otherwise."""
        if self.dtype.kind != "f" or self._nan_free:
            return None
        return np.isnan(self.read(box, fill=np.nan)).any(axis=0)

    def _to_native(
        self,
        x: np.ndarray,
        lead: int,
        order: int,
        activation: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> np.ndarray:
        if x.shape[lead:] != self.spatial_shape:
            raise InputError(f"array shape {x.shape} does not match the scene {self.shape}", path=self.uri)
        if self._grid is not None:
            x = self._grid.to_native(x, lead, order)
        if activation is not None:
            x = activation(x)
        return self._restore(x, lead)

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
        if self._grid is None:
            return self._restore(act(np.array(scores[...], np.float32)).argmax(axis=0).astype(np.uint8), 0)
        return self._restore(self._grid.argmax(scores, slab, act), 0)

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

    ``order`` is the interpolation used when ``target_spacing`` resamples (1 for images, 0 for labels;
    a ``None`` in it keeps the file's spacing along that axis);
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
