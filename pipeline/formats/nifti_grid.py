"""A volume's engine grid at a target spacing, and the maps both ways between it and the file's grid.

The reader (:mod:`pipeline.formats.nifti_reader`) reorients and crops the file's voxels; this module
only changes their spacing. Two rules: tilewise's (linear, or nearest for labels; both grids spanning
the same extent, or MONAI's ``Spacing`` with first voxel centres aligned), and nnU-Net's
(:mod:`pipeline.formats.spline`: its shape rounding, cubic splines, a separate anisotropic axis, scores
back at its orders and in its float16). A target spacing of ``None`` on an axis keeps the file's
spacing there, as nnU-Net keeps the through-plane spacing of a case for a 2-D configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.box import Box
from pipeline.errors import ConfigError
from pipeline.formats.spline import NnUNetResampling, needed, new_shape, resample_axis, resample_region
from pipeline.formats.spline import separate_axis as nnunet_separate_axis

# how a target spacing lays out the engine grid: both grids spanning the same extent (nnU-Net's, and
# tilewise's default), or MONAI's ``Spacing`` (first voxel centres aligned, the step exactly the ratio)
SPACING_GRIDS = ("extent", "monai")


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


@dataclass(frozen=True)
class SpacingGrid:
    """The engine grid of a (reoriented, cropped) volume ``native`` voxels large, resampled by
    ``factor`` (file voxels per engine voxel along each axis)."""

    native: tuple[int, ...]
    shape: tuple[int, ...]
    factor: tuple[float, ...]
    order: int  # images: 1 linear, 0 nearest (tilewise's rule; nnU-Net's has its own orders)
    monai: bool
    nnunet: NnUNetResampling | None
    separate_axis: int | None  # the axis nnU-Net resamples with ``order_z`` on the way in, if any
    score_axis: int | None  # ... and on the way back

    @classmethod
    def build(
        cls,
        native: Sequence[int],
        spacing: Sequence[float],
        target: Sequence[float | None],
        order: int = 1,
        spacing_grid: str = "extent",
        resampling: NnUNetResampling | None = None,
    ) -> SpacingGrid | None:
        """The grid ``target`` asks for (``None`` entries keep ``spacing``), or None when it is the
        file's own grid."""
        if spacing_grid not in SPACING_GRIDS:
            raise ConfigError(f"spacing_grid must be one of {', '.join(SPACING_GRIDS)}, not {spacing_grid!r}")
        if len(target) != len(native):
            raise ConfigError(f"target_spacing {tuple(target)} has not {len(native)} values")
        native = tuple(int(n) for n in native)
        want = tuple(float(s if t is None else t) for s, t in zip(spacing, target, strict=True))
        monai = spacing_grid == "monai"
        pairs = list(zip(native, spacing, want, strict=True))
        if monai:  # MONAI's Spacing: first voxel centres aligned, the step exactly t / s
            shape = tuple(max(1, int(np.round((n - 1) * s / t + 1.0))) for n, s, t in pairs)
            factor = tuple(t / s for _, s, t in pairs)
        elif resampling is not None:  # nnU-Net's own rounding
            shape = tuple(max(1, v) for v in new_shape(native, spacing, want))
            factor = tuple(n / m for n, m in zip(native, shape, strict=True))
        else:  # both grids span the same extent
            shape = tuple(max(1, round(n * s / t)) for n, s, t in pairs)
            factor = tuple(n / m for n, m in zip(native, shape, strict=True))
        if shape == native and not (monai and any(f != 1.0 for f in factor)):
            return None  # nnU-Net too returns a case whose shape does not change as it is
        sep = score = None
        if resampling is not None:
            sep = nnunet_separate_axis(spacing, want, resampling.force_separate_z)
            score = nnunet_separate_axis(want, spacing, resampling.score_force_separate_z)
        return cls(native, shape, factor, order, monai, resampling, sep, score)

    def spacing(self, native_spacing: Sequence[float]) -> tuple[float, ...]:
        """The engine grid's voxel spacing."""
        return tuple(s * f for s, f in zip(native_spacing, self.factor, strict=True))

    def coords(self, a: int, b: int, f: float) -> np.ndarray:
        """Source coordinates of target voxels ``a..b-1`` at step ``f`` under the spacing grid rule."""
        return np.arange(a, b) * f if self.monai else _src_coords(a, b, f)

    def read(
        self,
        read_native: Callable[[Box], np.ndarray],
        box: Box,
        prepare: Callable[[np.ndarray, Box], np.ndarray] | None = None,
        value_range: np.ndarray | None = None,
    ) -> np.ndarray:
        """The engine-grid voxels of ``box`` (inside the grid) from ``read_native(file_box)``: nnU-Net's
        resampling (``prepare`` normalising the file's voxels first, cubic values clipped to
        ``value_range``), else tilewise's at ``order``."""
        if self.nnunet is not None:

            def native(region: Box) -> np.ndarray:
                x = read_native(region)
                return x if prepare is None else prepare(x, region)

            return resample_region(native, self.native, self.factor, box, self.nnunet, self.separate_axis,
                                   value_range)  # fmt: skip
        coords = [
            np.clip(self.coords(a, b, f), 0, n - 1)
            for a, b, f, n in zip(box.start, box.stop, self.factor, self.native, strict=True)
        ]
        lo = [int(np.floor(c[0])) for c in coords]
        hi = [min(int(np.floor(c[-1])) + 2, n) for c, n in zip(coords, self.native, strict=True)]
        x = read_native(Box(tuple(lo), tuple(hi)))
        for axis, (c, a) in enumerate(zip(coords, lo, strict=True)):
            x = _resample_axis(x, axis + 1, c - a, self.order)
        return x

    def back(
        self, x: np.ndarray, lead: int, axis: int, span: tuple[int, int], lo: int, order: int
    ) -> np.ndarray:
        """Engine-grid values along ``axis`` (``x`` holds engine indices ``lo..``) at the file's voxels
        ``span``: nnU-Net's score orders for scores with its resampling, else ``order``."""
        f, m = self.factor[axis], self.shape[axis]
        if self.nnunet is not None and lead:  # nnU-Net's export of logits/probabilities
            if f == 1.0:  # an axis whose spacing is kept: linear at whole coordinates is the identity
                return np.take(x, np.arange(*span) - lo, axis=lead + axis)
            r = self.nnunet
            o = r.score_order_z if axis == self.score_axis else r.score_order
            return resample_axis(x, lead + axis, _src_coords(*span, 1 / f), o, lo, m)
        c = np.clip(self.coords(*span, 1 / f), 0, m - 1)
        return _resample_axis(x, lead + axis, c - lo, order)

    @property
    def half_scores(self) -> bool:
        """Whether scores go back as nnU-Net's export sends them: its float16 logits resized in float64
        (``scores_in``), the result stored as float16 (``scores_out``)."""
        return self.nnunet is not None and self.nnunet.score_dtype == "float16"

    def scores_in(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64) if self.half_scores else x

    def scores_out(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float16).astype(np.float32) if self.half_scores else x

    def to_native(self, x: np.ndarray, lead: int, order: int) -> np.ndarray:
        """``(*lead, *shape)`` values on the (reoriented, cropped) file grid: labels at ``order``,
        scores (``lead``) as nnU-Net's export or linearly."""
        x = self.scores_in(x) if lead else x
        for axis, n in enumerate(self.native):
            x = self.back(x, lead, axis, (0, n), 0, order)
        return self.scores_out(x) if lead else x

    def argmax(self, scores: Any, slab: int, activation: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """uint8 labels on the file grid: ``activation`` of the scores taken back, then their argmax,
        ``slab`` file voxels along the first axis at a time (holds one slab of ``scores``, not all)."""
        n0, m0 = self.native[0], self.shape[0]
        labels = np.empty(self.native, np.uint8)
        for a in range(0, n0, slab):
            b = min(a + slab, n0)
            lo, hi = needed(np.clip(self.coords(a, b, 1 / self.factor[0]), 0, m0 - 1), 1)
            x = self.back(self.scores_in(np.asarray(scores[:, lo : min(hi, m0)])), 1, 0, (a, b), lo, 1)
            for axis in range(1, len(self.native)):
                x = self.back(x, 1, axis, (0, self.native[axis]), 0, 1)
            labels[a:b] = activation(self.scores_out(x)).argmax(axis=0)
        return labels
