"""Class polygons as a GeoPackage, in the raster's CRS, without holding a huge label raster in memory.

Rasters up to ``WHOLE_ARRAY_MAX_PX`` are polygonised whole. Larger ones (or any ``block_rows``) go strip
by strip: regions that touch no strip cut are polygonised at once; regions cut by a strip edge are
joined across strips by union-find on the cut rows (scipy connected components) and polygonised once,
from their bounding box. shapely is not a dependency, so there is no geometric union: the polygons are
the same GDAL (4-connected) polygons the whole-array path gives. One limit: a region spanning many
strips is read through its whole bounding box (a class region spanning the scene costs about 6 bytes
per scene pixel, like the whole-array path). Strips and joined regions can run on other processes
(``mapper``): only the union-find and the writing stay serial, in strip order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any

import fiona
import numpy as np
import rasterio.features
from fiona.errors import FionaError
from scipy import ndimage

from pipeline.atomic import atomic_path
from pipeline.errors import ConfigError, InputError, OutputError
from pipeline.formats.colours import class_rgba
from pipeline.formats.qgis_style import STYLE_TABLE, style_records, vector_qml
from pipeline.formats.scene import GeoMeta

WHOLE_ARRAY_MAX_PX = 64 * 1024 * 1024
STRIP_PX = 16 * 1024 * 1024  # default strip size (pixels) for rasters above WHOLE_ARRAY_MAX_PX
STRIP_BATCH = 8  # strips handed to a mapper at once: what is held is their polygons, not the scene's
_FOUR = ndimage.generate_binary_structure(2, 1)  # 4-connectivity, as GDAL polygonize is called here
_SCHEMA = {"geometry": "Polygon", "properties": {"class_id": "int", "class_name": "str", "area": "float"}}
_SHAPES_DTYPES = {np.dtype(t) for t in ("uint8", "uint16", "int16", "int32")}

Rings = list[np.ndarray]  # pixel-space rings (col, row), exterior first


def _as_source(block: Any) -> np.ndarray:
    arr = np.asarray(block)
    if arr.dtype not in _SHAPES_DTYPES:
        if not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"labels must be integer class ids, got {arr.dtype}")
        arr = arr.astype(np.int32)
    return arr


def _shapes(source: np.ndarray, mask: np.ndarray, row0: int, col0: int) -> Iterator[tuple[int, Rings]]:
    """GDAL polygons of the masked regions, in global pixel coordinates."""
    if not mask.any():
        return
    for geom, value in rasterio.features.shapes(source, mask=mask, connectivity=4):
        offset = np.array([col0, row0], dtype=np.float64)
        rings = [np.asarray(ring, dtype=np.float64) + offset for ring in geom["coordinates"]]
        yield int(value), rings


def _ring_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))


class _Sink:
    """Turns pixel-space polygons into GeoPackage features (world coordinates, area in CRS units²)."""

    def __init__(self, collection: Any, meta: GeoMeta, names: Sequence[str], min_area_px: float) -> None:
        self.collection = collection
        t = meta.transform
        self.coef = (t.a, t.b, t.c, t.d, t.e, t.f)
        self.pixel_area = abs(t.a * t.e - t.b * t.d)
        self.names = names
        self.min_area_px = min_area_px
        self.buffer: list[fiona.Feature] = []
        self.count = 0

    def add(self, value: int, rings: Rings) -> None:
        area_px = _ring_area(rings[0]) - sum(_ring_area(r) for r in rings[1:])
        if area_px < self.min_area_px:
            return
        a, b, c, d, e, f = self.coef
        coords = []
        for r in rings:
            xs, ys = a * r[:, 0] + b * r[:, 1] + c, d * r[:, 0] + e * r[:, 1] + f
            coords.append(list(zip(xs.tolist(), ys.tolist(), strict=True)))
        name = self.names[value] if 0 <= value < len(self.names) else str(value)
        props = {"class_id": value, "class_name": name, "area": area_px * self.pixel_area}
        geometry = fiona.Geometry(type="Polygon", coordinates=coords)
        self.buffer.append(fiona.Feature(geometry=geometry, properties=props))
        if len(self.buffer) >= 5000:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.collection.writerecords(self.buffer)
            self.count += len(self.buffer)
            self.buffer = []


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.info: list[tuple[int, int, int, int, int, int, int]] = []  # class, r0, c0, r1, c1, seed r, c

    def add(self, info: tuple[int, int, int, int, int, int, int]) -> int:
        self.parent.append(len(self.parent))
        self.info.append(info)
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)

    def groups(self) -> list[tuple[int, int, int, int, int, int, int]]:
        """One (class, bbox, seed) per merged region; bboxes are unions of the members'."""
        merged: dict[int, list[int]] = {}
        for i, (cls, r0, c0, r1, c1, sr, sc) in enumerate(self.info):
            g = merged.setdefault(self.find(i), [cls, r0, c0, r1, c1, sr, sc])
            g[1:5] = [min(g[1], r0), min(g[2], c0), max(g[3], r1), max(g[4], c1)]
        return [(g[0], g[1], g[2], g[3], g[4], g[5], g[6]) for g in merged.values()]


StripCuts = dict[int, tuple[np.ndarray, np.ndarray, list[tuple[int, tuple[int, ...]]]]]


def strip_pass(
    labels: Any, span: tuple[int, int], *, height: int, skip: np.ndarray
) -> tuple[list[tuple[int, Rings]], StripCuts]:
    """One strip on its own (any worker): the polygons of regions touching no strip cut, and per class
    the component labels of the strip's top and bottom rows with the cut components' bbox and seed."""
    s0, s1 = span
    strip = _as_source(labels[s0:s1])
    valid = ~np.isin(strip, skip)
    interior = valid.copy()
    cuts: StripCuts = {}
    for cls in np.unique(strip[valid]).tolist():
        lab, n = ndimage.label(strip == cls, structure=_FOUR)
        cut_rows = ([0] if s0 > 0 else []) + ([lab.shape[0] - 1] if s1 < height else [])
        ids = np.setdiff1d(np.unique(lab[cut_rows]), [0]) if cut_rows else np.empty(0, int)
        if ids.size == 0:
            continue
        on_cut = np.zeros(n + 1, dtype=bool)
        on_cut[ids] = True
        interior &= ~on_cut[lab]
        objects = ndimage.find_objects(lab)
        nodes = []
        for i in ids.tolist():
            rs, cs = objects[i - 1]
            r = cut_rows[0] if (lab[cut_rows[0]] == i).any() else cut_rows[-1]
            seed_c = int(np.argmax(lab[r] == i))
            nodes.append((i, (cls, s0 + rs.start, cs.start, s0 + rs.stop, cs.stop, s0 + r, seed_c)))
        cuts[cls] = (lab[0].copy(), lab[-1].copy(), nodes)
    return list(_shapes(strip, interior, s0, 0)), cuts


def region_pass(labels: Any, group: tuple[int, ...]) -> list[Rings]:
    """The polygons of one region joined across strips, from its bounding box and a seed pixel."""
    cls, r0, c0, r1, c1, seed_r, seed_c = group
    window = _as_source(labels[r0:r1, c0:c1])
    lab, _ = ndimage.label(window == cls, structure=_FOUR)
    region = lab == lab[seed_r - r0, seed_c - c0]
    return [rings for _, rings in _shapes(region.astype(np.uint8), region, r0, c0)]


Mapper = Callable[[Callable[[Any], Any], list[Any]], Iterable[Any]]


def _serial(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    return [fn(i) for i in items]


def _polygonize_strips(labels: Any, skip: np.ndarray, rows: int, sink: _Sink, mapper: Mapper | None) -> None:
    """Strips (and then the joined regions) run through ``mapper`` a batch at a time, so polygons of a
    few batches are held, not the scene's; the union-find over the cut rows and the writing stay here,
    in strip order, so the file is the same for any mapper."""
    run = mapper or _serial
    batch = STRIP_BATCH if mapper is not None else 1
    height = int(labels.shape[0])
    spans = [(s0, min(height, s0 + rows)) for s0 in range(0, height, rows)]
    uf = _UnionFind()
    prev: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # class -> (bottom-row labels, label -> node)
    one_strip = partial(strip_pass, labels, height=height, skip=skip)
    for b0 in range(0, len(spans), batch):
        for shapes, cuts in run(one_strip, spans[b0 : b0 + batch]):
            cur: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            for cls, (top, bottom, nodes) in cuts.items():
                node = np.full(int(max(top.max(), bottom.max(), *(i for i, _ in nodes))) + 1, -1, np.int64)
                for i, info in nodes:
                    node[i] = uf.add(info)  # type: ignore[arg-type]
                if cls in prev:
                    above, above_node = prev[cls]
                    touching = (above > 0) & (top > 0)
                    for a, b in np.unique(np.stack([above[touching], top[touching]]), axis=1).T.tolist():
                        uf.union(int(above_node[a]), int(node[b]))
                cur[cls] = (bottom, node)
            prev = cur
            for value, rings in shapes:
                sink.add(value, rings)
    groups = uf.groups()
    for g0 in range(0, len(groups), batch * 16):
        part = groups[g0 : g0 + batch * 16]
        for (cls, *_), polygons in zip(part, run(partial(region_pass, labels), part), strict=True):
            for rings in polygons:
                sink.add(cls, rings)


def write_polygons(
    labels: Any,
    dest_gpkg: str | os.PathLike[str],
    *,
    meta: GeoMeta,
    class_names: Sequence[str],
    class_colors: Sequence[Any] | None = None,
    nodata: int | None = 255,
    skip_classes: Sequence[int] = (),
    min_area_px: float = 0,
    overwrite: bool = False,
    block_rows: int | None = None,
    layer: str = "classes",
    mapper: Mapper | None = None,
) -> int:
    """Write one polygon per 4-connected class region of ``(H, W)`` labels; returns the feature count.

    Fields: ``class_id``, ``class_name``, ``area`` (CRS units², so degrees² for EPSG:4326). Nodata and
    ``skip_classes`` (pass ``[0]`` to drop background) make no polygons. ``block_rows`` forces strips
    of that height; by default strips are used only above ``WHOLE_ARRAY_MAX_PX`` pixels. The file keeps
    a default QGIS style (categorised by class, in ``class_colors``) in its ``layer_styles`` table.
    ``mapper(fn, items)`` runs strips side by side (worker processes: GDAL's polygonize and scipy's
    labelling hold the GIL); the file is the same with or without it.
    """
    dest = Path(dest_gpkg)
    if len(labels.shape) != 2:
        raise InputError(f"labels must be (H, W), got shape {tuple(labels.shape)}", path=str(dest))
    if block_rows is not None and block_rows < 1:
        raise ConfigError(f"block_rows must be >= 1, got {block_rows}", path=str(dest))
    height, width = (int(n) for n in labels.shape)
    rows = block_rows or (height if height * width <= WHOLE_ARRAY_MAX_PX else max(1, STRIP_PX // width))
    skip = np.asarray(sorted({*map(int, skip_classes), *([] if nodata is None else [int(nodata)])}))
    crs_wkt = meta.crs.to_wkt() if meta.crs is not None else ""
    colors = class_rgba(class_names, class_colors)
    with atomic_path(dest, overwrite=overwrite) as final_tmp:
        tmp = final_tmp.with_name(final_tmp.name + ".gpkg")  # GDAL warns about a GPKG named otherwise
        try:
            with fiona.open(
                tmp, "w", driver="GPKG", layer=layer, schema=_SCHEMA, crs_wkt=crs_wkt
            ) as collection:
                sink = _Sink(collection, meta, class_names, min_area_px)
                if rows >= height:
                    source = _as_source(labels[:, :])
                    for value, rings in _shapes(source, ~np.isin(source, skip), 0, 0):
                        sink.add(value, rings)
                else:
                    _polygonize_strips(labels, skip, rows, sink, mapper)
                sink.flush()
            style_schema, rows = style_records(layer, vector_qml(class_names, colors))
            with fiona.open(
                tmp, "w", driver="GPKG", layer=STYLE_TABLE, schema=style_schema, FID="id"
            ) as styles:
                styles.writerecords(fiona.Feature(properties=row) for row in rows)
            os.replace(tmp, final_tmp)
        except FionaError as exc:
            raise OutputError(f"cannot write GeoPackage: {exc}", path=str(dest)) from exc
        finally:
            for leftover in (tmp, *(tmp.with_name(tmp.name + s) for s in ("-journal", "-wal", "-shm"))):
                with suppress(OSError):
                    leftover.unlink(missing_ok=True)
    return sink.count
