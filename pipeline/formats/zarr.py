"""Zarr in and out: plain v2/v3 arrays, OME-Zarr images and labels, geo-referenced label arrays,
and the job's intermediate work stores.

Reads are lazy and touch only the chunks a box needs. A chunk that is missing from a store reads as
the array's ``fill_value``: that is zarr's rule (absent chunks are how zarr stores empty space), so a
deleted chunk is not an error here. Missing or unreadable *metadata* is, and raises FormatError.
"""

from __future__ import annotations

import colorsys
import os
import shutil
import warnings
from collections.abc import Sequence
from math import ceil, log2
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from pipeline.atomic import atomic_path, temp_sibling
from pipeline.core.box import Box
from pipeline.errors import ConfigError, FormatError, InputError, OutputError, TilewiseError
from pipeline.formats.local import missing_reason
from pipeline.formats.scene import GeoMeta, VolumeMeta

_CHANNEL_NAMES = {"c", "channel", "channels", "band", "bands"}
_TIME_NAMES = {"t", "time"}
_OME_KEYS = ("ome", "omero", "image-label", "labels", "plate", "well")


# ----------------------------------------------------------------------------------------- helpers
def storage_options(uri: str) -> dict[str, Any]:
    """fsspec options for ``uri`` taken from the environment (S3 endpoint, anonymous access)."""
    if not uri.startswith(("s3://", "s3a://")):
        return {}
    opts: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_url"] = endpoint
    if os.environ.get("AWS_NO_SIGN_REQUEST", "").upper() in ("YES", "TRUE", "1"):
        opts["anon"] = True
    return opts


def _is_url(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _store(uri: str, *, read_only: bool) -> Any:
    if _is_url(uri):
        return zarr.storage.FsspecStore.from_url(
            uri, storage_options=storage_options(uri), read_only=read_only
        )
    return zarr.storage.LocalStore(uri.removeprefix("file://"), read_only=read_only)


def fast_compressor() -> BloscCodec:
    """zstd inside blosc with byte shuffle: quick to write, good on labels and float scores alike."""
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def parse_color(color: Any, *, index: int = 0) -> tuple[int, int, int, int]:
    """``"#rrggbb[aa]"`` or an RGB(A) sequence of 0..255 ints to RGBA; ``None`` gets a stable default
    (transparent black for class 0, evenly spread hues after it)."""
    if color is None:
        if index == 0:
            return (0, 0, 0, 0)
        r, g, b = colorsys.hsv_to_rgb(((index - 1) * 0.618034) % 1.0, 0.75, 0.95)
        return (round(r * 255), round(g * 255), round(b * 255), 255)
    if isinstance(color, str):
        h = color.strip().lstrip("#")
        if len(h) not in (6, 8):
            raise ConfigError(f"colour {color!r} is not #rrggbb or #rrggbbaa")
        try:
            vals = [int(h[i : i + 2], 16) for i in range(0, len(h), 2)]
        except ValueError as exc:
            raise ConfigError(f"colour {color!r} is not hexadecimal") from exc
    else:
        vals = [int(v) for v in color]
    if len(vals) not in (3, 4) or not all(0 <= v <= 255 for v in vals):
        raise ConfigError(f"colour {color!r} needs 3 or 4 values in 0..255")
    return (vals[0], vals[1], vals[2], vals[3] if len(vals) == 4 else 255)


def class_rgba(names: Sequence[str], colors: Sequence[Any] | None) -> list[tuple[int, int, int, int]]:
    """One RGBA per class, defaults filling what ``colors`` leaves out."""
    given = list(colors or [])
    return [parse_color(given[i] if i < len(given) else None, index=i) for i in range(len(names))]


def _open_node(uri: str) -> Any:
    if not _is_url(uri) and not os.path.exists(uri.removeprefix("file://")):
        raise InputError(missing_reason(uri.removeprefix("file://"), "no such file or folder"), path=uri)
    try:
        return zarr.open(store=_store(uri, read_only=True), mode="r")
    except TilewiseError:
        raise
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
        raise FormatError("not a Zarr store: no .zarray/.zgroup or zarr.json metadata", path=uri) from exc
    except Exception as exc:  # corrupt JSON, missing keys, unknown codecs...
        raise FormatError(f"corrupt Zarr metadata ({type(exc).__name__}: {exc})", path=uri) from exc


# ------------------------------------------------------------------------------------------- scene
class ZarrScene:
    """A zarr array, or one level of an OME-Zarr image, as ``(C, *spatial)``."""

    def __init__(
        self,
        uri: str,
        array: Any,
        roles: Sequence[str],
        *,
        axes: Sequence[str],
        meta: GeoMeta | VolumeMeta | None = None,
        nodata: float | None = None,
        level: int = 0,
    ) -> None:
        self.uri, self.array, self._roles, self.level = uri, array, tuple(roles), level
        channels = [n for n, r in zip(array.shape, roles, strict=True) if r == "c"]
        spatial = [int(n) for n, r in zip(array.shape, roles, strict=True) if r == "s"]
        self.shape: tuple[int, ...] = (int(channels[0]) if channels else 1, *spatial)
        self.dtype = np.dtype(array.dtype)
        if self.dtype.kind not in "biuf":
            raise InputError(f"unsupported data type {self.dtype} (not real numbers)", path=uri)
        self.axes = tuple(axes)  # names of the spatial axes, in scene order
        self.meta, self.nodata = meta, nodata

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as "reopen", so a Dask worker opens its own store handle."""
        return (_reopen, (self.uri, self.level))

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    def read(self, box: Box, fill: float = 0.0) -> np.ndarray:
        out = np.full((self.shape[0], *box.shape), fill, dtype=self.dtype)
        inside = box.intersect(Box.from_shape(self.spatial_shape))
        if inside.empty:
            return out
        spatial = iter(zip(inside.start, inside.stop, strict=True))
        idx = tuple(
            0 if r == "t" else slice(None) if r == "c" else slice(*next(spatial)) for r in self._roles
        )
        try:
            data = np.asarray(self.array[idx])
        except Exception as exc:
            raise FormatError(f"cannot read chunk data ({type(exc).__name__}: {exc})", path=self.uri) from exc
        kept = [r for r in self._roles if r != "t"]
        data = np.moveaxis(data, kept.index("c"), 0) if "c" in kept else data[None]
        out[(slice(None), *inside.slices(box.start))] = data
        return out

    def read_nodata(self, box: Box) -> np.ndarray | None:
        """Where every channel equals ``nodata`` or any is NaN (outside: True); None without nodata."""
        if self.nodata is None and self.dtype.kind != "f":
            return None
        mask = np.ones(box.shape, dtype=bool)
        inside = box.intersect(Box.from_shape(self.spatial_shape))
        if not inside.empty:
            data = self.read(inside)
            bad = np.isnan(data).any(axis=0) if self.dtype.kind == "f" else np.zeros(inside.shape, bool)
            if self.nodata is not None:
                bad |= (data == self.nodata).all(axis=0)
            mask[inside.slices(box.start)] = bad
        return mask

    def close(self) -> None:
        pass


def _reopen(uri: str, level: int) -> ZarrScene:
    return open_zarr(uri, level=level)


def _roles(names: Sequence[str] | None, shape: Sequence[int], uri: str) -> tuple[list[str], list[str]]:
    """Role of each stored axis (c channel, t time, s space) and the spatial axis names."""
    nd = len(shape)
    if names is None or len(names) != nd:
        names = {2: "yx", 3: "zyx", 4: "czyx", 5: "tczyx"}.get(nd, "")
        if not names:
            raise InputError(f"{nd}-D array: expected 2 to 5 axes", path=uri)
    names = [str(n).lower() for n in names]
    roles = ["c" if n in _CHANNEL_NAMES else "t" if n in _TIME_NAMES else "s" for n in names]
    for n, r, size in zip(names, roles, shape, strict=True):
        if r == "t" and size != 1:
            raise InputError(
                f"time axis {n!r} has {size} steps; only a single time point is supported", path=uri
            )
    if roles.count("c") > 1 or roles.count("s") not in (2, 3):
        raise InputError(f"axes {names} need 2 or 3 spatial axes and at most one channel axis", path=uri)
    return roles, [n for n, r in zip(names, roles, strict=True) if r == "s"]


def _geo_meta(attrs: dict[str, Any]) -> GeoMeta | None:
    if "crs" not in attrs or "transform" not in attrs:
        return None
    from affine import Affine

    transform = Affine.from_gdal(*[float(v) for v in attrs["transform"]])
    crs: Any = attrs["crs"]
    if crs:
        try:
            from rasterio.crs import CRS

            crs = CRS.from_wkt(crs) if isinstance(crs, str) else CRS.from_user_input(crs)
        except ImportError:  # keep the WKT string when rasterio is absent
            pass
    return GeoMeta(
        crs=crs, transform=transform, nodata=attrs.get("nodata"), gsd=(abs(transform.e), abs(transform.a))
    )


def _open_ome(uri: str, group: Any, multiscales: list[dict[str, Any]], level: int) -> ZarrScene:
    try:
        ms = multiscales[0]
        datasets = ms["datasets"]
        if not 0 <= level < len(datasets):
            raise InputError(f"level {level} asked, the image has levels 0..{len(datasets) - 1}", path=uri)
        ds = datasets[level]
        array = group[ds["path"]]
        axes = ms.get("axes")
        names = [a["name"] if isinstance(a, dict) else a for a in axes] if axes else None
        roles, spatial = _roles(names, array.shape, uri)
        scale = np.ones(array.ndim)
        shift = np.zeros(array.ndim)
        for t in [*(ds.get("coordinateTransformations") or []), *(ms.get("coordinateTransformations") or [])]:
            if t.get("type") == "scale" and "scale" in t:
                factor = np.asarray(t["scale"], dtype=np.float64)
                shift, scale = shift * factor, scale * factor
            elif t.get("type") == "translation" and "translation" in t:
                shift = shift + np.asarray(t["translation"], dtype=np.float64)
    except TilewiseError:
        raise
    except Exception as exc:
        raise FormatError(
            f"bad OME-Zarr multiscales metadata ({type(exc).__name__}: {exc})", path=uri
        ) from exc
    keep = [i for i, r in enumerate(roles) if r == "s"]
    affine = np.eye(len(keep) + 1)
    affine[: len(keep), : len(keep)] = np.diag(scale[keep])
    affine[: len(keep), -1] = shift[keep]
    meta = VolumeMeta(
        affine=affine, spacing=tuple(float(s) for s in scale[keep]), orientation="".join(spatial)
    )
    return ZarrScene(uri, array, roles, axes=spatial, meta=meta, level=level)


def open_zarr(uri: str | os.PathLike[str], *, level: int = 0) -> ZarrScene:
    """Open a zarr v2/v3 array, a group holding one array, or an OME-Zarr image (``level`` of its
    multiscales), local or on ``s3://`` (endpoint from ``AWS_ENDPOINT_URL``)."""
    uri = os.fspath(uri)
    node = _open_node(uri)
    attrs = dict(node.attrs)
    if isinstance(node, zarr.Group):
        ome = attrs.get("ome", attrs)
        if not isinstance(ome, dict):
            raise FormatError(f"'ome' attribute is a {type(ome).__name__}, not a mapping", path=uri)
        if ome.get("multiscales"):
            return _open_ome(uri, node, ome["multiscales"], level)
        if any(k in attrs for k in _OME_KEYS):
            hint = f" (a labels container: open {uri.rstrip('/')}/<name>)" if "labels" in ome else ""
            raise FormatError(f"OME-Zarr group without 'multiscales' metadata{hint}", path=uri)
        arrays = list(node.arrays())
        if len(arrays) != 1:
            raise FormatError(
                f"group holds {len(arrays)} arrays and no OME 'multiscales'; open one array", path=uri
            )
        name, node = arrays[0]
        uri, attrs = f"{uri.rstrip('/')}/{name}", dict(node.attrs)
    if level != 0:
        raise InputError("level applies only to OME-Zarr multiscale images", path=uri)
    names = attrs.get("_ARRAY_DIMENSIONS") or getattr(node.metadata, "dimension_names", None)
    if names is not None and not (isinstance(names, list | tuple) and all(isinstance(n, str) for n in names)):
        raise FormatError(f"axis names {names!r} are not a list of strings", path=uri)
    roles, spatial = _roles(names, node.shape, uri)
    nodata = attrs.get("nodata")
    if nodata is not None and (isinstance(nodata, bool) or not isinstance(nodata, int | float)):
        raise FormatError(f"nodata attribute {nodata!r} is not a number", path=uri)
    try:
        meta = _geo_meta(attrs)
    except Exception as exc:  # garbage crs / transform attributes
        raise FormatError(f"bad crs/transform attributes ({type(exc).__name__}: {exc})", path=uri) from exc
    return ZarrScene(uri, node, roles, axes=spatial, meta=meta, nodata=nodata)


# ----------------------------------------------------------------------------------------- writers
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
    ``_CRS`` (GDAL's Zarr driver). Copied in chunk-row bands (bounded memory), then renamed into place.
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
        for r0 in range(0, shape[0], chunk[0]):
            arr[r0 : r0 + chunk[0]] = np.asarray(labels[(*lead, slice(r0, r0 + chunk[0]))], dtype=np.uint8)
    return dest


# ------------------------------------------------------------------------------------- work stores
def create_work_array(
    path: str | os.PathLike[str],
    shape: Sequence[int],
    dtype: Any,
    chunks: Sequence[int],
    *,
    shards: Sequence[int] | None = None,
    fill_value: Any = 0,
    overwrite: bool = False,
) -> zarr.Array:
    """The job's intermediate store (zarr v3, blosc-zstd). Idempotent for resumes: an existing store
    with the same shape, dtype, chunks and shards is reopened as is; a different one is refused
    unless ``overwrite``. Each writer must own whole chunks (whole *shards* when sharded)."""
    uri = os.fspath(path)
    shape, chunks = tuple(int(n) for n in shape), tuple(int(n) for n in chunks)
    shards_t = tuple(int(n) for n in shards) if shards is not None else None
    store = _store(uri, read_only=False)
    if not overwrite:
        try:
            old = zarr.open_array(store=store, mode="r+")
        except (FileNotFoundError, zarr.errors.NodeNotFoundError):
            old = None
        except Exception as exc:
            raise OutputError(f"unreadable work store; pass overwrite ({exc})", path=uri) from exc
        if old is not None:
            have, want = (
                (old.shape, old.dtype, old.chunks, old.shards),
                (shape, np.dtype(dtype), chunks, shards_t),
            )
            if have != want:
                raise OutputError(
                    f"work store exists as {have}, wanted {want} (shape, dtype, chunks, shards)", path=uri
                )
            return old
    return zarr.create_array(
        store=store,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        shards=shards_t,
        zarr_format=3,
        fill_value=fill_value,
        compressors=fast_compressor(),
        overwrite=True,
    )


def open_work_array(path: str | os.PathLike[str], *, mode: str = "r+") -> zarr.Array:
    """Reopen a work store (another worker, a resumed job)."""
    uri = os.fspath(path)
    try:
        return zarr.open_array(store=_store(uri, read_only=mode == "r"), mode=mode)
    except Exception as exc:
        raise FormatError(f"cannot open work store ({type(exc).__name__}: {exc})", path=uri) from exc


def writer_unit(array: zarr.Array) -> tuple[int, ...]:
    """The block one writer must own whole: the shard when sharded, else the chunk."""
    return tuple(array.shards or array.chunks)
