"""A bounded GDAL block cache for the process.

GDAL caches decoded raster blocks up to ``GDAL_CACHEMAX``, 5 % of physical RAM by default. A job
streams every block of the scene through that cache once, so the cache, and the process's RSS, grew
with the scene until that limit (measured: +0.9 GB over a 16384² job on a 24 GB machine). Blocks are
read once in sweep order, so a small cache loses nothing. A ``GDAL_CACHEMAX`` set by the user wins.
"""

from __future__ import annotations

import os

from rasterio.env import set_gdal_config

CACHE_BYTES = 64 * 2**20  # a row of 512² tiles across a 32k-pixel-wide, 4-band uint8 scene


def bound_gdal_cache(limit_bytes: int = CACHE_BYTES) -> None:
    """Cap the block cache at ``limit_bytes`` unless the environment sets ``GDAL_CACHEMAX``."""
    if "GDAL_CACHEMAX" in os.environ:
        return
    set_gdal_config("GDAL_CACHEMAX", limit_bytes)  # rasterio applies it with GDALSetCacheMax64
