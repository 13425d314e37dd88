"""GDAL's MODE overview levels of a label raster, computed tile by tile with the same result.

A COG's overview levels are what GDAL's COG driver builds with ``OVERVIEW_RESAMPLING=MODE``: level
``k`` is ``floor(size / 2**k)`` pixels per axis (at least 1), levels are added while the previous one
is larger than a tile (512) on either axis, and each level is computed from the one before (measured
against GDAL 3.10: cascading matches, computing from full resolution does not). A destination pixel
``i`` reads source pixels ``[int(i*r + 1e-8), ceil((i+1)*r - 1e-8))`` with ``r = src / dst`` (so 2 or
3 wide when a size is odd), and its value is GDAL's byte-mode rule: scanning the window in raster
order and skipping nodata, the first value whose running count goes above the best count so far
wins; a window of nodata only gives nodata. Since every destination pixel depends only on its own
window, any tiling of a level gives the same level, which is what lets workers build it block-wise.
"""

from __future__ import annotations

import math

import numpy as np

TILE = 512  # the COG's tile edge, which also ends the overview list


def level_shapes(shape: tuple[int, int], tile: int = TILE) -> list[tuple[int, int]]:
    """The overview shapes GDAL's COG driver makes for a raster of ``shape`` (largest first)."""
    out: list[tuple[int, int]] = []
    h, w = shape
    while h > tile or w > tile:
        h, w = max(1, h // 2), max(1, w // 2)
        out.append((h, w))
    return out


def source_span(n_src: int, n_dst: int, start: int, stop: int) -> tuple[int, int]:
    """Source pixels ``[a, b)`` that destination pixels ``[start, stop)`` of one axis read."""
    lo, hi = _bounds(n_src, n_dst, np.arange(start, stop))
    return int(lo[0]), int(hi[-1])


def _bounds(n_src: int, n_dst: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = n_src / n_dst
    lo = (idx * r + 1e-8).astype(np.int64)
    hi = np.array([math.ceil((i + 1) * r - 1e-8) for i in idx.tolist()], dtype=np.int64)
    hi = np.where(hi == lo, lo + 1, hi)
    return lo, np.minimum(hi, n_src)


def mode_tile(
    src: np.ndarray,
    src_origin: tuple[int, int],
    src_shape: tuple[int, int],
    dst_shape: tuple[int, int],
    dst_box: tuple[int, int, int, int],
    nodata: int | None,
) -> np.ndarray:
    """Destination pixels ``dst_box = (y0, y1, x0, x1)`` of the level ``dst_shape`` made from a level
    of ``src_shape``; ``src`` holds that level's pixels from ``src_origin`` and covers the windows
    (``source_span`` per axis)."""
    y0, y1, x0, x1 = dst_box
    if src_shape[0] == 2 * dst_shape[0] and src_shape[1] == 2 * dst_shape[1]:  # every window is 2x2
        oy, ox = 2 * y0 - src_origin[0], 2 * x0 - src_origin[1]
        part = src[oy : oy + 2 * (y1 - y0), ox : ox + 2 * (x1 - x0)]
        return _mode4(part[0::2, 0::2], part[0::2, 1::2], part[1::2, 0::2], part[1::2, 1::2], nodata)
    axes = []
    for n_src, n_dst, a, b, o in (
        (src_shape[0], dst_shape[0], y0, y1, src_origin[0]),
        (src_shape[1], dst_shape[1], x0, x1, src_origin[1]),
    ):
        lo, hi = _bounds(n_src, n_dst, np.arange(a, b))
        width = int((hi - lo).max())
        offs = lo[:, None] + np.arange(width)[None, :]
        axes.append((np.minimum(offs, hi[:, None] - 1) - o, offs < hi[:, None]))
    (rows, row_ok), (cols, col_ok) = axes
    values, valid = [], []
    for p in range(rows.shape[1]):  # window positions in raster order: row p, then column q
        for q in range(cols.shape[1]):
            v = src[rows[:, p][:, None], cols[:, q][None, :]]
            ok = row_ok[:, p][:, None] & col_ok[:, q][None, :]
            if nodata is not None:
                ok = ok & (v != nodata)
            values.append(v)
            valid.append(ok)
    return _mode(values, valid, nodata)


def _mode4(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray, nodata: int | None) -> np.ndarray:
    """``_mode`` for 2x2 windows (``a b`` over ``c d``) in a few dozen whole-array uint8 operations,
    the common case (every level that halves exactly). Selections are bit masks, not ``np.where``
    (several times slower on uint8 here)."""
    u8 = np.uint8
    a, b, c, d = (np.ascontiguousarray(v) for v in (a, b, c, d))
    ones = np.ones(a.shape, dtype=bool)
    va, vb, vc, vd = (ones,) * 4 if nodata is None else (a != nodata, b != nodata, c != nodata, d != nodata)
    # equal to an earlier valid value (an equal value has the same validity, so one mask suffices)
    ab, ac, bc = (a == b) & va, (a == c) & va, (b == c) & vb
    ad, bd, cd = (a == d) & va, (b == d) & vb, (c == d) & vc
    run_a, run_b = va.view(u8), vb.view(u8) + ab.view(u8)
    run_c = vc.view(u8) + ac.view(u8) + bc.view(u8)
    run_d = vd.view(u8) + ad.view(u8) + bd.view(u8) + cd.view(u8)
    total_a = run_a + ab.view(u8) + ac.view(u8) + ad.view(u8)
    best = np.maximum(
        np.maximum(total_a, run_b + bc.view(u8) + bd.view(u8)), np.maximum(run_c + cd.view(u8), run_d)
    )

    def pick(take: np.ndarray, value: np.ndarray, other: np.ndarray) -> np.ndarray:
        return other ^ ((value ^ other) & np.negative(take.view(u8)))

    out = pick(run_c == best, c, d)
    out = pick(run_b == best, b, out)
    out = pick(run_a == best, a, out)
    return pick(best == 0, np.full(a.shape, 0 if nodata is None else nodata, u8), out)


def _mode(values: list[np.ndarray], valid: list[np.ndarray], nodata: int | None) -> np.ndarray:
    """GDAL's rule over windows given as per-position planes: the first position whose value's
    running count reaches the window's highest count (the moment that value took the lead)."""
    n = len(values)
    running = [v.astype(np.int16) for v in valid]
    total = [r.copy() for r in running]
    for j in range(n):
        for k in range(j):
            same = (values[j] == values[k]) & valid[j] & valid[k]
            running[j] += same  # k comes before j: counts towards j's running count
            total[j] += same
            total[k] += same
    best = np.maximum.reduce(total)
    out = np.full(values[0].shape, 0 if nodata is None else nodata, dtype=np.uint8)
    done = np.zeros(values[0].shape, dtype=bool)
    for j in range(n):
        hit = ~done & valid[j] & (running[j] == best)
        out[hit] = values[j][hit]
        done |= hit
    return out


def average_tile(src: np.ndarray) -> np.ndarray:
    """GDAL's byte AVERAGE over 2x2 windows, ``(sum + 2) // 4`` (measured equal to GDAL 3.10's COG
    levels, cascaded like MODE), for ``(..., 2h, 2w)`` uint8 pixels: the probability COG's levels when
    every level halves exactly. Bands have no nodata, so every pixel counts."""
    s = src[..., 0::2, 0::2].astype(np.uint16)
    s += src[..., 0::2, 1::2]
    s += src[..., 1::2, 0::2]
    s += src[..., 1::2, 1::2]
    s += 2
    s >>= 2
    return s.astype(np.uint8)
