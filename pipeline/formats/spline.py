"""nnU-Net's resampling (``skimage.transform.resize``, mode ``edge``), one axis at a time on a region.

nnU-Net resizes images with cubic splines (order 3) and scores linearly (order 1), with order 0 or 1
along an anisotropic axis (:func:`separate_axis`: its ``determine_do_sep_z_and_axis``). skimage maps
target voxel ``i`` to source coordinate ``(i + 0.5) * n / m - 0.5`` (both grids spanning the same
extent) and replicates edge voxels beyond the volume.

A cubic spline interpolates spline *coefficients*, which scipy gets from a recursive prefilter over
the whole line: global, so a block could not compute them from its own region. The prefilter's impulse
response decays as ``|z|**k`` (``z = sqrt(3) - 2``), so here it is a fixed FIR of ``2 * HALO + 1`` taps:
a coefficient depends only on the ``HALO`` source voxels either side (edge-replicated past the volume),
the same numbers in the same order whatever region a block reads, so results do not depend on block
size. The taps cut off past ``HALO`` weigh 4.6e-12 in all, so a value moves by at most that fraction
of the signal's magnitude: 2.7e-12 measured against skimage on a unit step (tests/pipeline/formats/
test_spline.py), far below the float32 step nnU-Net stores its resampled image in. The cost is the
halo: a block reads ``HALO + 2`` more source voxels either side along each resampled axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import NamedTuple

import numpy as np

from pipeline.core.box import Box

HALO = 20  # source voxels either side a cubic-spline coefficient is computed from
ANISO_THRESHOLD = 3.0  # nnunetv2.configuration.ANISO_THRESHOLD


@cache
def _taps() -> np.ndarray:
    """The cubic B-spline prefilter's impulse response, ``-HALO..HALO`` (scipy's own, exact to 1e-16)."""
    from scipy.ndimage import spline_filter1d

    delta = np.zeros(8 * HALO + 1)
    delta[4 * HALO] = 1.0
    return spline_filter1d(delta, 3, mode="mirror")[3 * HALO : 5 * HALO + 1].copy()


def source_coords(a: int, b: int, f: float) -> np.ndarray:
    """Source coordinates of target voxels ``a..b-1`` when both grids span the same extent (``f = n / m``)."""
    return (np.arange(a, b) + 0.5) * f - 0.5


def new_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """nnU-Net's ``compute_new_shape``, with its own rounding (``round(old / new * n)``)."""
    return tuple(round(s / t * n) for n, s, t in zip(shape, spacing, target, strict=True))


def _lowres_axis(spacing: Sequence[float]) -> int | None:
    axes = np.where(max(spacing) / np.asarray(spacing, dtype=float) == 1)[0]
    return int(axes[0]) if len(axes) == 1 else None  # two or three coarsest axes: none is separate


def separate_axis(
    current: Sequence[float],
    new: Sequence[float],
    force: bool | None = None,
    threshold: float = ANISO_THRESHOLD,
) -> int | None:
    """The axis nnU-Net resamples separately (with ``order_z``), or None (``determine_do_sep_z_and_axis``)."""
    if force is not None:
        return _lowres_axis(current) if force else None
    for spacing in (current, new):
        if max(spacing) / min(spacing) > threshold:
            return _lowres_axis(spacing)
    return None


def needed(s: np.ndarray, order: int) -> tuple[int, int]:
    """Source indices ``[lo, hi)`` that coordinates ``s`` read at ``order`` (may lie past the volume)."""
    if order == 0:
        i = np.floor(s + 0.5)
        return int(i.min()), int(i.max()) + 1
    i = np.floor(s)
    if order == 1:
        return int(i.min()), int(i.max()) + 2
    return int(i.min()) - 1 - HALO, int(i.max()) + 3 + HALO


def resample_axis(x: np.ndarray, axis: int, s: np.ndarray, order: int, lo: int, n: int) -> np.ndarray:
    """Values at coordinates ``s`` along ``axis`` of ``x``, which holds source indices ``lo..`` of a
    volume ``n`` long (edge-replicated past it, covering :func:`needed`). Order 0 and 1 clamp to the
    volume as mode ``edge`` does; order 3 returns float64."""
    shape = [-1 if d == axis else 1 for d in range(x.ndim)]
    if order == 0:
        return np.take(x, np.clip(np.floor(s + 0.5).astype(np.intp), 0, n - 1) - lo, axis=axis)
    if order == 1:
        s = np.clip(s, 0, n - 1)
        i0 = np.floor(s).astype(np.intp)
        w = (s - i0).astype(x.dtype if x.dtype.kind == "f" else np.float32).reshape(shape)
        x = x if x.dtype.kind == "f" else x.astype(np.float32)
        i1 = np.minimum(i0 + 1, n - 1)
        return np.take(x, i0 - lo, axis=axis) * (1 - w) + np.take(x, i1 - lo, axis=axis) * w
    if order != 3:
        raise ValueError(f"order must be 0, 1 or 3, not {order}")
    from scipy.ndimage import correlate1d

    coef = correlate1d(x.astype(np.float64, copy=False), _taps(), axis=axis, mode="nearest")
    i = np.floor(s).astype(np.intp)
    t = (s - i).reshape(shape)
    u = 1.0 - t
    weights = (u**3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6, (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6)
    out = np.take(coef, i - 1 - lo, axis=axis) * weights[0]
    for k in (1, 2, 3):
        out += np.take(coef, i - 1 + k - lo, axis=axis) * weights[k]
    return out


class NnUNetResampling(NamedTuple):
    """The ``resampling_fn_*_kwargs`` of an nnU-Net configuration: images (``order``, ``order_z``,
    ``force_separate_z``) and scores on the way back (``score_*``)."""

    order: int = 3
    order_z: int = 0
    force_separate_z: bool | None = None
    score_order: int = 1
    score_order_z: int = 0
    score_force_separate_z: bool | None = None
    score_dtype: str = "float16"  # the scores back: float64 sums stored as float16, as nnU-Net's export


def resample_region(
    read: Callable[[Box], np.ndarray],
    native: Sequence[int],
    factor: Sequence[float],
    box: Box,
    spec: NnUNetResampling,
    sep: int | None,
    value_range: np.ndarray | None,
) -> np.ndarray:
    """nnU-Net's ``resample_data_or_seg`` of the target region ``box`` (float64): the in-plane axes (all
    three when none is ``sep``) at ``spec.order``, clipped to ``value_range`` (``(C, S, 2)``: the input's
    min/max, per slice along ``sep`` when S > 1, as skimage clips each resize), then ``sep`` at
    ``spec.order_z``. ``read(native_box)`` gives the file's voxels; what the coordinates need past the
    volume (the spline's halo included) is edge-replicated here."""
    orders = [spec.order_z if a == sep else spec.order for a in range(len(native))]
    coords = [source_coords(a, b, f) for a, b, f in zip(box.start, box.stop, factor, strict=True)]
    # an axis whose spacing is kept (a 2-D configuration's through-plane axis) is read as it is: a spline
    # at whole coordinates interpolates the samples themselves, as skimage's does to within rounding
    moved = [f != 1.0 for f in factor]
    ends = zip(box.start, box.stop, strict=True)
    spans = [needed(c, o) if m else e for c, o, m, e in zip(coords, orders, moved, ends, strict=True)]
    want = Box(tuple(a for a, _ in spans), tuple(b for _, b in spans))
    real = want.intersect(Box.from_shape(tuple(native)))
    x = read(real)
    pad = [(0, 0)] + [(r0 - w0, w1 - r1) for w0, w1, r0, r1 in zip(want.start, want.stop, real.start,
                                                                  real.stop, strict=True)]  # fmt: skip
    x = np.pad(x, pad, mode="edge") if any(p != (0, 0) for p in pad) else x
    for axis in [a for a in range(len(orders)) if a != sep and moved[a]]:
        x = resample_axis(x, axis + 1, coords[axis], orders[axis], want.start[axis], native[axis])
    if value_range is not None:
        lo, hi = value_range[..., 0], value_range[..., 1]
        shape = [x.shape[0]] + [1] * len(orders)
        if sep is not None and value_range.shape[1] > 1:  # per source slice along the separate axis
            idx = np.clip(np.arange(want.start[sep], want.stop[sep]), 0, native[sep] - 1)
            shape[1 + sep] = -1
            lo, hi = lo[:, idx], hi[:, idx]
        else:
            lo, hi = lo[:, :1], hi[:, :1]
        x = np.clip(x, lo.reshape(shape), hi.reshape(shape))
    if sep is not None and moved[sep]:
        x = resample_axis(x, sep + 1, coords[sep], orders[sep], want.start[sep], native[sep])
    return x
