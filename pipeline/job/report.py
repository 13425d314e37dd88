"""Per-scene report: what ran, how long, and how much of each class (ha for geo, mL for volumes)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.formats.scene import GeoMeta


def class_counts(labels: Any, classes: int, nodata_label: int, rows: int = 1024) -> tuple[list[int], int]:
    """Pixel count per class and of nodata, reading the label array in slabs (never whole)."""
    counts = np.zeros(256, dtype=np.int64)
    for start in range(0, labels.shape[0], rows):
        counts += np.bincount(np.asarray(labels[start : start + rows]).ravel(), minlength=256)
    return [int(c) for c in counts[:classes]], int(counts[nodata_label])


def pixel_area_m2(meta: GeoMeta, rows: int, cols: int) -> float | None:
    """Area of one pixel in m², or None if the CRS has no known unit. Geographic CRSs use the geodesic
    area of the scene's central pixel (good to a fraction of a percent for scenes a few km across)."""
    t = meta.transform
    if meta.crs is None:
        return None
    if meta.crs.is_geographic:
        from pyproj import Geod

        def xy(col: float, row: float) -> tuple[float, float]:
            return t.c + t.a * col + t.b * row, t.f + t.d * col + t.e * row

        x0, y0 = xy(cols / 2, rows / 2)
        x1, y1 = xy(cols / 2 + 1, rows / 2 + 1)
        area, _ = Geod(ellps="WGS84").polygon_area_perimeter([x0, x1, x1, x0], [y0, y0, y1, y1])
        return abs(area)
    factor = meta.crs.linear_units_factor[1] if meta.crs.linear_units_factor else 1.0
    return abs(t.a * t.e - t.b * t.d) * factor * factor


def class_table(
    names: list[str], counts: list[int], unit: str, per_pixel: float | None
) -> list[dict[str, Any]]:
    out = []
    for i, (name, n) in enumerate(zip(names, counts, strict=True)):
        row: dict[str, Any] = {"id": i, "name": name, "pixels": n}
        if per_pixel is not None and math.isfinite(per_pixel):
            row[unit] = round(n * per_pixel, 4)
        out.append(row)
    return out


def write_report(dest: Path, report: dict[str, Any], *, overwrite: bool = True) -> Path:
    with atomic_path(dest, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str))
    return dest
