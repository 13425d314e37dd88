"""Raster scenes seen at the bundle's ground sampling distance, and their labels mapped back.

A model trained at 10 m must see 10 m pixels whatever the input's resolution. ``ResampledGeoScene``
reads any region of the native raster resampled on the fly (GDAL, windowed, never the whole scene);
``NativeView`` presents engine-grid labels on the native grid (nearest, by pixel centres) so every
writer keeps the input's CRS, transform and shape exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from pipeline.core.box import Box
from pipeline.formats.scene import GeoMeta

GSD_TOLERANCE = 0.01  # relative difference below which no resampling is done


def needs_resampling(native_gsd: tuple[float, float] | None, target: tuple[float, ...] | None) -> bool:
    if not target or not native_gsd:
        return False
    return any(abs(n - t) > GSD_TOLERANCE * t for n, t in zip(native_gsd, target, strict=True))


class ResampledGeoScene:
    """A GeoTIFF scene (``pipeline.formats.geotiff.GeoTiffScene``) resampled to ``gsd`` (y, x)."""

    def __init__(self, native: Any, gsd: tuple[float, float]) -> None:
        self.native = native
        self.uri = native.uri
        self.dtype = np.dtype(np.float32)
        h, w = native.spatial_shape
        gy, gx = native.meta.gsd
        rows, cols = max(1, round(h * gy / gsd[0])), max(1, round(w * gx / gsd[1]))
        self.shape: tuple[int, ...] = (native.shape[0], rows, cols)
        self.scale = (h / rows, w / cols)  # native pixels per engine pixel
        m = native.meta
        self.meta = GeoMeta(
            crs=m.crs,
            transform=m.transform @ Affine.scale(self.scale[1], self.scale[0]),
            nodata=m.nodata,
            gsd=(gy * self.scale[0], gx * self.scale[1]),
            tags=m.tags,
        )
        self.resampling = Resampling.average if min(self.scale) > 1 else Resampling.bilinear

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    def _window(self, inner: Box) -> Window:
        (r0, c0), (r1, c1) = inner.start, inner.stop
        sy, sx = self.scale
        return Window(c0 * sx, r0 * sy, (c1 - c0) * sx, (r1 - r0) * sy)

    def read(self, box: Box, fill: float = 0.0) -> np.ndarray:
        inner = box.intersect(Box.from_shape(self.spatial_shape))
        out = np.full((self.shape[0], *box.shape), fill, dtype=self.dtype)
        if inner.empty:
            return out
        scene = self.native
        with scene._lock:
            data = scene.dataset.read(
                scene.bands,
                window=self._window(inner),
                out_shape=(self.shape[0], *inner.shape),
                resampling=self.resampling,
                out_dtype=np.float32,
            )
        out[(slice(None), *inner.slices(box.start))] = data
        return out

    def read_nodata(self, box: Box) -> np.ndarray | None:
        """Nodata by GDAL's dataset mask at the engine grid (nearest), True outside the raster."""
        out = np.ones(box.shape, dtype=bool)
        inner = box.intersect(Box.from_shape(self.spatial_shape))
        if inner.empty:
            return out
        scene = self.native
        with scene._lock:
            mask = scene.dataset.read_masks(
                scene.bands, window=self._window(inner), out_shape=(len(scene.bands), *inner.shape),
                resampling=Resampling.nearest,
            )  # fmt: skip
        out[inner.slices(box.start)] = (mask == 0).all(axis=0)
        return out

    def read_overview(self, max_size: int) -> np.ndarray:
        return self.native.read_overview(max_size)

    def close(self) -> None:
        self.native.close()


class NativeView:
    """Read-only view of an engine-grid array ``(..., h, w)`` on the native grid ``(..., H, W)``."""

    def __init__(self, engine: Any, native_spatial: tuple[int, int]) -> None:
        self.engine = engine
        self.shape = (*engine.shape[:-2], *native_spatial)
        self.dtype = engine.dtype
        self.ndim = len(self.shape)

    def _index(self, key: Any, axis: int) -> np.ndarray:
        n, e = self.shape[axis], self.engine.shape[axis]
        native = np.arange(*key.indices(n)) if isinstance(key, slice) else np.array([int(key) % n])
        return np.minimum(((native + 0.5) * e / n).astype(np.int64), e - 1)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if Ellipsis in key:
            at = key.index(Ellipsis)
            key = key[:at] + (slice(None),) * (self.ndim - len(key) + 1) + key[at + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        lead, (kr, kc) = key[:-2], key[-2:]
        rows, cols = self._index(kr, self.ndim - 2), self._index(kc, self.ndim - 1)
        if rows.size == 0 or cols.size == 0:
            return np.zeros((*np.empty(self.shape[:-2])[lead].shape, rows.size, cols.size), self.dtype)
        region = np.asarray(
            self.engine[(*lead, slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))]
        )
        out = region[..., rows[:, None] - rows.min(), cols[None, :] - cols.min()]
        if not isinstance(kr, slice):
            out = out[..., 0, :]
        if not isinstance(kc, slice):
            out = out[..., 0]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out.astype(dtype) if dtype is not None else out
