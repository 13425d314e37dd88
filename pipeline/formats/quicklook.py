"""A small PNG per scene: the image, contrast-stretched, with the predicted classes overlaid.

Format-agnostic: any Scene works, 2-D ``(C, H, W)`` or 3-D ``(C, X, Y, Z)``, with labels of the scene's
spatial shape (numpy, zarr, anything sliceable). Memory stays bounded: 2-D scenes are read from their
overviews when they have ``read_overview`` (GeoTIFF) or sampled strip by strip; 3-D volumes are read
one slice per view.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.atomic import atomic_path
from pipeline.core.box import Box
from pipeline.errors import InputError
from pipeline.formats.colours import parse_color
from pipeline.formats.scene import GeoMeta, Scene, VolumeMeta

STRIP_PX = 8 * 1024 * 1024  # pixels per strip when sampling a 2-D scene without overviews
VIEWS = ("axial", "coronal", "sagittal")


def _fit(shape: Sequence[int], max_size: int, spacing: Sequence[float] | None = None) -> tuple[int, int]:
    """Output (h, w): longer side at most ``max_size``, physical aspect kept when spacing is known."""
    h, w = (float(shape[0]), float(shape[1]))
    if spacing is not None:
        h, w = h * spacing[0], w * spacing[1]
        unit = min(spacing)
        h, w = h / unit, w / unit
    scale = min(1.0, max_size / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _sample_rows(
    read_rows: Callable[[int, int], np.ndarray], height: int, width: int, out_hw: tuple[int, int]
) -> np.ndarray:
    """Nearest-neighbour decimation of ``(..., H, W)`` data, read in row strips (never whole)."""
    rows = ((np.arange(out_hw[0]) + 0.5) * height / out_hw[0]).astype(np.int64)
    cols = ((np.arange(out_hw[1]) + 0.5) * width / out_hw[1]).astype(np.int64)
    strip = max(1, STRIP_PX // max(1, width))
    parts = []
    for r0 in range(0, height, strip):
        wanted = rows[(rows >= r0) & (rows < r0 + strip)]
        if wanted.size:
            block = np.asarray(read_rows(r0, int(wanted[-1]) + 1))
            parts.append(block[..., wanted - r0, :][..., cols])
    return np.concatenate(parts, axis=-2)


def _valid_mask(image: np.ndarray, scene: Scene) -> np.ndarray:
    valid = np.ones(image.shape[1:], dtype=bool)
    if np.issubdtype(image.dtype, np.floating):
        valid &= np.isfinite(image).all(axis=0)
    nodata = scene.meta.nodata if isinstance(scene.meta, GeoMeta) else None
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        valid &= ~(image == nodata).all(axis=0)
    return valid


def _stretch(image: np.ndarray, valid: np.ndarray, rgb_bands: tuple[int, int, int] | None) -> np.ndarray:
    """(C, h, w) -> (h, w, 3) uint8, each channel stretched 2-98 % over valid pixels."""
    if rgb_bands is not None:
        if any(not 0 <= b < image.shape[0] for b in rgb_bands):
            raise InputError(f"rgb_bands {rgb_bands} outside the scene's {image.shape[0]} channels")
        picked = [image[b] for b in rgb_bands]
    else:
        picked = [image[b] for b in (0, 1, 2)] if image.shape[0] >= 3 else [image[0]] * 3
    out = np.zeros((*image.shape[1:], 3), dtype=np.uint8)
    for i, band in enumerate(picked):
        values = band[valid & np.isfinite(band)] if valid.any() else band[np.isfinite(band)]
        if values.size == 0:
            continue
        lo, hi = np.percentile(values.astype(np.float64), [2, 98])
        scaled = (np.nan_to_num(band.astype(np.float64), nan=lo) - lo) / max(hi - lo, 1e-12)
        out[..., i] = np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)
    out[~valid] = 0
    return out


def _overlay(
    base: np.ndarray, labels: np.ndarray, colors: Sequence[Any], alpha: float, nodata: int | None
) -> np.ndarray:
    """Blend class colours over ``base``; a colour's own alpha scales ``alpha`` (0: left unpainted)."""
    lut = np.zeros((256, 3), dtype=np.float64)
    weight = np.zeros(256, dtype=np.float64)
    for k, rgba in enumerate(parse_color(c, index=i) for i, c in enumerate(colors[:256])):
        lut[k], weight[k] = rgba[:3], alpha * rgba[3] / 255
    if nodata is not None and 0 <= nodata < 256:
        weight[nodata] = 0.0
    ids = np.clip(labels.astype(np.int64), 0, 255)
    hit = (weight[ids] > 0) & (labels >= 0) & (labels < 256)
    w = weight[ids[hit]][:, None]
    out = base.astype(np.float64)
    out[hit] = (1.0 - w) * out[hit] + w * lut[ids[hit]]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _resize(rgb: np.ndarray, out_hw: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    if rgb.shape[:2] == out_hw:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((out_hw[1], out_hw[0]), resample))


def _view_2d(scene: Scene, labels: Any, max_size: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    height, width = scene.spatial_shape
    out_hw = _fit((height, width), max_size)
    reader = getattr(scene, "read_overview", None)
    if callable(reader):
        image = np.asarray(reader(max_size))
    else:
        image = _sample_rows(lambda r0, r1: scene.read(Box((r0, 0), (r1, width))), height, width, out_hw)
    lab = _sample_rows(lambda r0, r1: labels[r0:r1], height, width, image.shape[1:])
    return image, lab, out_hw


def _view_3d(
    scene: Scene, labels: Any, view: str, max_size: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Middle slice of one view, displayed radiology-style upright: (C, rows, cols) and labels."""
    nx, ny, nz = scene.spatial_shape
    spacing = scene.meta.spacing if isinstance(scene.meta, VolumeMeta) else (1.0, 1.0, 1.0)
    if view == "axial":  # (X, Y) at mid Z -> rows = Y (anterior up), cols = X
        box, lab_sel, axes = Box((0, 0, nz // 2), (nx, ny, nz // 2 + 1)), np.s_[:, :, nz // 2], (0, 1)
    elif view == "coronal":  # (X, Z) at mid Y -> rows = Z (superior up)
        box, lab_sel, axes = Box((0, ny // 2, 0), (nx, ny // 2 + 1, nz)), np.s_[:, ny // 2, :], (0, 2)
    elif view == "sagittal":  # (Y, Z) at mid X -> rows = Z, cols = Y
        box, lab_sel, axes = Box((nx // 2, 0, 0), (nx // 2 + 1, ny, nz)), np.s_[nx // 2, :, :], (1, 2)
    else:
        raise InputError(f"unknown view {view!r}; use one of {VIEWS}")
    image = np.squeeze(scene.read(box), axis=1 + ({0, 1, 2} - set(axes)).pop())
    lab = np.asarray(labels[lab_sel])
    image, lab = image.swapaxes(1, 2)[:, ::-1], lab.T[::-1]
    out_hw = _fit(lab.shape, max_size, spacing=(spacing[axes[1]], spacing[axes[0]]))
    return image, lab, out_hw


def write_quicklook(
    scene: Scene,
    labels: Any,
    dest_png: str | os.PathLike[str],
    *,
    class_colors: Sequence[Any],
    max_size: int = 1024,
    alpha: float = 0.5,
    nodata: int | None = 255,
    rgb_bands: tuple[int, int, int] | None = None,
    views: Sequence[str] = ("axial",),
    overwrite: bool = False,
) -> Path:
    """Write a PNG of ``scene`` with ``labels`` overlaid in ``class_colors`` (class id = index; any form
    ``pipeline.formats.colours.parse_color`` reads).

    ``rgb_bands`` are 0-based channels shown as R, G, B (e.g. ``(2, 1, 0)`` for a B,G,R,NIR stack);
    by default the first 3 channels, or channel 0 as grey. Nodata labels and ids without a colour stay
    unpainted. 3-D scenes show the middle slice of each of ``views`` side by side, each fitting
    ``max_size`` with the voxel spacing's aspect.
    """
    dest = Path(dest_png)
    spatial = tuple(int(n) for n in scene.spatial_shape)
    if tuple(int(n) for n in labels.shape) != spatial:
        raise InputError(f"labels shape {tuple(labels.shape)} != scene shape {spatial}", path=str(dest))
    if len(spatial) == 2:
        parts = [_view_2d(scene, labels, max_size)]
    elif len(spatial) == 3:
        parts = [_view_3d(scene, labels, view, max_size) for view in views]
    else:
        raise InputError(f"quicklook needs a 2-D or 3-D scene, got {spatial}", path=str(dest))
    tiles = []
    for image, lab, out_hw in parts:
        base = _stretch(image, _valid_mask(image, scene), rgb_bands)
        painted = _overlay(base, lab, class_colors, alpha, nodata)
        tiles.append(_resize(painted, out_hw, Image.Resampling.NEAREST))
    height = max(t.shape[0] for t in tiles)
    canvas = np.zeros((height, sum(t.shape[1] for t in tiles), 3), dtype=np.uint8)
    col = 0
    for t in tiles:
        top = (height - t.shape[0]) // 2
        canvas[top : top + t.shape[0], col : col + t.shape[1]] = t
        col += t.shape[1]
    with atomic_path(dest, overwrite=overwrite) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG", optimize=True)
    return dest
