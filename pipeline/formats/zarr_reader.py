"""Zarr in: plain v2/v3 arrays and OME-Zarr images as scenes, local or on object storage.

Reads are lazy and touch only the chunks a box needs. A chunk that is missing from a store reads as
the array's ``fill_value``: that is zarr's rule (absent chunks are how zarr stores empty space), so a
deleted chunk is not an error here. Missing or unreadable *metadata* is, and raises FormatError.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from pipeline.core.box import Box
from pipeline.errors import FormatError, InputError, TilewiseError
from pipeline.formats.local import missing_reason
from pipeline.formats.scene import GeoMeta, VolumeMeta

_CHANNEL_NAMES = {"c", "channel", "channels", "band", "bands"}
_TIME_NAMES = {"t", "time"}
_OME_KEYS = ("ome", "omero", "image-label", "labels", "plate", "well")


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
    """The codec for zarr v3 stores written here (the NIfTI cache, v3 geo labels): zstd inside blosc
    with byte shuffle, quick to write and good on labels and float scores alike."""
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


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
        """Nothing to release: a zarr array holds no open file between reads."""


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
