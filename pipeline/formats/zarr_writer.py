"""Zarr out: labels as OME-Zarr label images (volumes) or as plain geo-referenced arrays (rasters).

Both are built beside the destination and renamed into place, so a half-written store never sits at
the final path. Class colours come from ``pipeline.formats.colours``, the rule every writer shares.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from math import ceil, log2
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.atomic import atomic_path, temp_sibling
from pipeline.errors import ConfigError, InputError
from pipeline.formats.colours import class_rgba
from pipeline.formats.scene import GeoMeta
from pipeline.formats.zarr_reader import fast_compressor


def _label_source(labels: Any, chunks: Sequence[int]) -> Any:
    import dask.array as da

    if isinstance(labels, da.Array):
        return labels
    if isinstance(labels, zarr.Array):
        return da.from_zarr(labels)
    return da.from_array(np.asarray(labels), chunks=tuple(chunks))


def write_ome_zarr_labels(
    labels: Any,
    dest: str | os.PathLike[str],
    *,
    image_name: str = "labels",
    class_names: Sequence[str],
    class_colors: Sequence[Any] | None = None,
    spacing: Sequence[float] | None = None,
    axes: str | Sequence[str] | None = None,
    unit: str | None = None,
    overwrite: bool = False,
    chunks: Sequence[int] | None = None,
    ngff_version: str = "0.5",
    max_levels: int = 4,
) -> Path:
    """Write labels as an image-less OME-Zarr label image: ``dest`` itself is the label group, with
    ``multiscales`` (2-4 levels, nearest) and ``image-label`` colours and class properties, so
    ``ome_zarr.reader.Reader(parse_url(dest))`` and napari open it as a labels layer.

    ``axes`` names the given array's axes (default ``yx`` / ``zyx``; a NIfTI-engine volume is ``xyz``);
    ``spacing`` and ``chunks`` follow that order. Data is stored in NGFF order (z, y, x). A zarr or dask
    input is copied chunk by chunk through dask, never whole in memory. Built in a temporary folder
    beside ``dest``, then renamed.
    """
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.scale import Methods

    with warnings.catch_warnings():  # its signature builds a deprecated Scaler default at import
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.writer import write_labels

    nd = len(labels.shape)
    names = list(axes or ("yx" if nd == 2 else "zyx"))
    if nd not in (2, 3) or len(names) != nd or len(set(names)) != nd or not set(names) <= set("zyx"):
        raise InputError(f"labels {labels.shape} with axes {names}: need 2-D/3-D, axes from z, y, x")
    if np.dtype(labels.dtype).kind not in "biu":
        raise InputError(f"labels must be integers, not {labels.dtype}")
    if ngff_version not in ("0.4", "0.5"):
        raise ConfigError(f"ngff_version must be '0.4' or '0.5', not {ngff_version!r}")
    order = sorted(range(nd), key=lambda i: "zyx".index(names[i]))
    spacing = [float(s) for s in spacing] if spacing is not None else [1.0] * nd
    chunk = list(chunks) if chunks is not None else [64 if nd == 3 else 256] * nd
    chunk = [min(int(chunk[i]), int(labels.shape[i])) for i in order]
    data = _label_source(labels, [chunk[order.index(i)] for i in range(nd)]).transpose(order).rechunk(chunk)
    dims = [names[i] for i in order]
    n_down = max(1, min(max(2, max_levels) - 1, ceil(log2(max(max(data.shape) / 256, 1.0)))))
    factors = [{d: 2**k for d in dims} for k in range(1, n_down + 1)]
    colors = class_rgba(class_names, class_colors)
    meta = {
        "colors": [{"label-value": i, "rgba": list(c)} for i, c in enumerate(colors)],
        "properties": [{"label-value": i, "class": n} for i, n in enumerate(class_names)],
    }
    dest = Path(dest)
    with atomic_path(dest, overwrite=overwrite) as tmp:
        build = temp_sibling(dest)
        try:
            root = zarr.open_group(str(build), mode="w", zarr_format=3 if ngff_version == "0.5" else 2)
            fmt = FormatV05() if ngff_version == "0.5" else FormatV04()
            write_labels(
                data,
                root,
                name=image_name,
                scaler=None,
                scale_factors=factors,
                method=Methods.NEAREST,
                fmt=fmt,
                axes=dims,
                scale={d: spacing[i] for d, i in zip(dims, order, strict=True)},
                axes_units=dict.fromkeys(dims, unit) if unit else None,
                storage_options={"chunks": tuple(chunk)},
                label_metadata=meta,
            )
            os.replace(build / "labels" / image_name, tmp)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return dest


def _crs_wkt(crs: Any) -> str | None:
    if crs is None or isinstance(crs, str):
        return crs
    return crs.to_wkt() if hasattr(crs, "to_wkt") else str(crs)


def write_geo_zarr(
    labels: Any,
    dest: str | os.PathLike[str],
    *,
    meta: GeoMeta,
    class_names: Sequence[str],
    class_colors: Sequence[Any] | None = None,
    nodata: int | None = 255,
    overwrite: bool = False,
    chunks: Sequence[int] = (512, 512),
    zarr_format: int = 2,
) -> Path:
    """A plain ``(y, x)`` uint8 zarr array for geo outputs with attributes ``crs`` (WKT), ``transform``
    (GDAL order), ``nodata``, ``class_names``, ``class_colors``, ``_ARRAY_DIMENSIONS`` (xarray) and
    ``_CRS`` (GDAL's Zarr driver). Copied in chunk-row bands, a few at once on every core (memory: a
    band per core), then renamed into place.
    Zarr v2 by default: the format GDAL, xarray and older tools all read."""
    shape = tuple(int(n) for n in labels.shape)
    lead: tuple[int, ...] = ()
    if len(shape) == 3 and shape[0] == 1:  # (1, H, W): index band by band, never labels[0] whole
        shape, lead = shape[1:], (0,)
    if len(shape) != 2:
        raise InputError(f"geo labels must be 2-D (H, W), not {shape}")
    t = meta.transform
    gdal = list(t.to_gdal()) if hasattr(t, "to_gdal") else [float(v) for v in t]
    wkt = _crs_wkt(meta.crs)
    attrs = {
        "crs": wkt,
        "transform": [float(v) for v in gdal],
        "nodata": nodata,
        "class_names": list(class_names),
        "class_colors": [list(c) for c in class_rgba(class_names, class_colors)],
        "_ARRAY_DIMENSIONS": ["y", "x"],
        "_CRS": {"wkt": wkt},
    }
    chunk = tuple(min(int(c), n) for c, n in zip(chunks, shape, strict=True))
    dest = Path(dest)
    with atomic_path(dest, overwrite=overwrite) as tmp:
        extra: dict[str, Any] = {"dimension_names": ("y", "x")} if zarr_format == 3 else {}
        if zarr_format == 2:
            import numcodecs

            comp: Any = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)
        else:
            comp = fast_compressor()
        arr = zarr.create_array(
            store=str(tmp),
            shape=shape,
            dtype=np.uint8,
            chunks=chunk,
            compressors=comp,
            fill_value=0 if nodata is None else nodata,
            zarr_format=zarr_format,
            attributes=attrs,
            **extra,
        )

        def band(r0: int) -> None:  # one row of whole chunks: its own writer
            arr[r0 : r0 + chunk[0]] = np.asarray(labels[(*lead, slice(r0, r0 + chunk[0]))], dtype=np.uint8)

        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # zstd and zarr's I/O release the GIL
            list(pool.map(band, range(0, shape[0], chunk[0])))
    return dest
