"""A STAC Item as one scene: the bundle's channels from the item's assets, on one grid.

Public catalogues keep Sentinel-2 and Landsat as one COG per band, at 10, 20 or 30 m. Each channel
the bundle wants is found among the assets by asset key, by band name or by common name
(``eo:bands`` in STAC 1.0, ``bands`` with ``eo:common_name`` in 1.1), or as ``--bands B08=nir`` says.
The scene's grid is the finest of the picked assets; coarser bands are resampled onto it by GDAL
(rasterio's ``WarpedVRT``, bilinear), never through a VRT written here. Channels come in the bundle's
order, so the bundle's ``band_indexes`` (meant for multi-band files) do not apply.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from pipeline.core.box import Box
from pipeline.errors import FormatError, InputError
from pipeline.formats.scene import GeoMeta


@dataclass(frozen=True)
class BandSource:
    """Where one channel comes from: an asset's raster and the band in it (1-based)."""

    channel: str
    asset: str
    href: str
    band: int = 1


def _stac_io() -> Any:
    """pystac's reader over fsspec, so ``s3://`` items read like local ones."""
    import fsspec
    import pystac

    class FsspecStacIO(pystac.StacIO):
        def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
            href = str(source)
            if "://" not in href or href.startswith(("http://", "https://")):
                return pystac.StacIO.default().read_text(href, *args, **kwargs)
            with fsspec.open(href, "r", encoding="utf-8") as f:
                return str(f.read())

        def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
            raise NotImplementedError("tilewise only reads STAC Items here")

    return FsspecStacIO()


def read_item(uri: str) -> Any:
    """The pystac Item at ``uri``; anything else (a Collection, broken JSON) is one clear error."""
    import pystac

    try:
        obj = pystac.read_file(uri, stac_io=_stac_io())
    except FileNotFoundError as exc:
        raise InputError("STAC Item not found", path=uri) from exc
    except (ValueError, KeyError, pystac.STACError, TypeError) as exc:
        raise FormatError(f"not a readable STAC Item ({type(exc).__name__}: {exc})"[:300], path=uri) from exc
    if not isinstance(obj, pystac.Item):
        raise InputError(f"a STAC {type(obj).__name__}, not an Item", path=uri)
    return obj


def _names(asset: Any) -> list[tuple[str, ...]]:
    """Per band of an asset, the names it answers to: band name and common name."""
    from pystac.extensions.eo import EOExtension

    bands = None
    with suppress(Exception):
        bands = EOExtension.ext(asset).bands
    if bands:
        return [tuple(n for n in (b.name, b.common_name) if n) for b in bands]
    listed = asset.extra_fields.get("bands") or []
    return [tuple(str(b[k]) for k in ("name", "eo:common_name") if b.get(k)) for b in listed]


def band_sources(
    item: Any, channels: Sequence[str], overrides: Mapping[str, str] | None = None
) -> list[BandSource]:
    """Each channel's asset: ``overrides[channel]`` (an asset key or band/common name) or the channel
    itself, matched case-insensitively against asset keys, then band names and common names."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(channels))
    if unknown:
        raise InputError(f"--bands names {', '.join(unknown)}, not bundle channels ({', '.join(channels)})")
    assets = dict(item.assets)
    found = []
    for channel in channels:
        want = overrides.get(channel, channel).lower()
        hit = next(
            (
                BandSource(channel, k, a.get_absolute_href() or a.href)
                for k, a in assets.items()
                if k.lower() == want
            ),
            None,
        )
        if hit is None:
            for key, asset in assets.items():
                for i, names in enumerate(_names(asset), start=1):
                    if want in (n.lower() for n in names):
                        hit = BandSource(channel, key, asset.get_absolute_href() or asset.href, i)
                        break
                if hit:
                    break
        if hit is None:
            have = ", ".join(sorted(item.assets))
            raise InputError(
                f"no asset for channel {channel!r} (looked for {want!r} as asset key, band or common name; "
                f"assets: {have}); map it with --bands {channel}=ASSET",
                path=item.get_self_href(),
            )
        found.append(hit)
    return found


def _invalid(band: np.ndarray, nodata: float | None) -> np.ndarray:
    """Where a band holds no data: its nodata value, or NaN for floats without one."""
    if nodata is not None and not np.isnan(nodata):
        return band == nodata
    if band.dtype.kind == "f":
        return np.isnan(band)
    return np.zeros(band.shape, dtype=bool)


class StacScene:
    """The picked assets as one ``(C, H, W)`` scene on the finest asset's grid."""

    model_channels = True  # channels are already the bundle's, in its order

    def __init__(
        self,
        uri: str,
        *,
        channels: Sequence[str],
        bands: Mapping[str, str] | None = None,
        target_gsd: Sequence[float] | None = None,
    ) -> None:
        from pipeline.formats.gdal_cache import bound_gdal_cache

        bound_gdal_cache()
        self.uri = str(uri)
        item = read_item(self.uri)
        self.item_datetime: datetime | None = item.datetime
        self.sources = band_sources(item, channels, bands)
        self._lock = threading.RLock()
        self._open: list[Any] = []
        self._grid(target_gsd)

    def _grid(self, target_gsd: Sequence[float] | None) -> None:
        from pipeline.formats.geotiff import open_geotiff

        firsts = []
        try:
            for s in self.sources:
                firsts.append(open_geotiff(s.href, bands=[s.band]))
        except Exception:
            for scene in firsts:
                scene.close()
            raise
        finest = min(firsts, key=lambda g: g.meta.gsd[0] * g.meta.gsd[1])
        transform, (h, w), gsd = finest.meta.transform, finest.spatial_shape, finest.meta.gsd
        if (
            target_gsd
            and tuple(float(g) for g in target_gsd) != tuple(gsd)
            and transform.b == transform.d == 0
        ):
            from affine import Affine  # the bundle's GSD over the finest asset's extent

            gy, gx = (float(g) for g in target_gsd)
            h, w = max(1, round(h * gsd[0] / gy)), max(1, round(w * gsd[1] / gx))
            sign = 1 if transform.e > 0 else -1
            transform, gsd = Affine(gx, 0.0, transform.c, 0.0, sign * gy, transform.f), (gy, gx)
        self.shape: tuple[int, ...] = (len(firsts), h, w)
        self.dtype: np.dtype = np.dtype(np.result_type(*(g.dtype for g in firsts)))
        self.meta = GeoMeta(crs=finest.meta.crs, transform=transform, nodata=finest.meta.nodata, gsd=gsd)
        self._nodata = [g.meta.nodata for g in firsts]
        for g in firsts:
            g.close()

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    def _datasets(self) -> list[Any]:
        """One reader per band: the file itself on the scene's grid, else GDAL warping it onto it."""
        if self._open:
            return self._open
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        from pipeline.formats.geotiff import gdal_path

        h, w = self.spatial_shape
        for s, nodata in zip(self.sources, self._nodata, strict=True):
            ds = rasterio.open(gdal_path(s.href))
            if (ds.crs, ds.transform, ds.height, ds.width) != (self.meta.crs, self.meta.transform, h, w):
                warped = WarpedVRT(
                    ds,
                    crs=self.meta.crs,
                    transform=self.meta.transform,
                    width=w,
                    height=h,
                    resampling=Resampling.bilinear,
                    src_nodata=nodata,
                    nodata=nodata,
                )
                self._open.append((warped, ds))
            else:
                self._open.append((ds, None))
        return self._open

    def read_with_nodata(self, box: Box, fill: float = 0.0) -> tuple[np.ndarray, np.ndarray | None]:
        from rasterio.windows import Window

        inner = box.intersect(Box.from_shape(self.spatial_shape))
        out = np.full((self.shape[0], *box.shape), fill, dtype=self.dtype)
        has_nodata = any(v is not None for v in self._nodata) or self.dtype.kind == "f"
        mask = np.ones(box.shape, dtype=bool) if has_nodata else None
        if inner.empty:
            return out, mask
        (r0, c0), (r1, c1) = inner.start, inner.stop
        window = Window(c0, r0, c1 - c0, r1 - r0)
        with self._lock:
            try:
                data = np.stack(
                    [
                        ds.read(s.band, window=window, out_dtype=self.dtype)
                        for s, (ds, _) in zip(self.sources, self._datasets(), strict=True)
                    ]
                )
            except Exception as exc:
                if isinstance(exc, InputError | FormatError):
                    raise
                raise FormatError(f"cannot read {inner}: {exc}"[:300], path=self.uri) from exc
        out[(slice(None), *inner.slices(box.start))] = data
        if mask is not None:
            per_band = [_invalid(d, v) for d, v in zip(data, self._nodata, strict=True)]
            mask[inner.slices(box.start)] = np.logical_and.reduce(per_band)
        return out, mask

    def read(self, box: Box, fill: float = 0.0) -> np.ndarray:
        return self.read_with_nodata(box, fill)[0]

    def read_nodata(self, box: Box) -> np.ndarray | None:
        return self.read_with_nodata(box)[1]

    def read_overview(self, max_size: int) -> np.ndarray:
        """The whole scene decimated so its longer side is at most ``max_size`` (file overviews help)."""
        from rasterio.enums import Resampling

        h, w = self.spatial_shape
        scale = min(1.0, max_size / max(h, w))
        shape = (max(1, round(h * scale)), max(1, round(w * scale)))
        with self._lock:
            return np.stack(
                [
                    ds.read(s.band, out_shape=shape, resampling=Resampling.nearest)
                    for s, (ds, _) in zip(self.sources, self._datasets(), strict=True)
                ]
            ).astype(self.dtype, copy=False)

    def close(self) -> None:
        for ds, under in self._open:
            ds.close()
            if under is not None:
                under.close()
        self._open = []

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"], state["_lock"] = [], None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()


def open_stac(
    uri: str,
    *,
    channels: Sequence[str],
    bands: Mapping[str, str] | None = None,
    target_gsd: Sequence[float] | None = None,
) -> StacScene:
    """Open a STAC Item (local path or ``s3://``) as the bundle's ``channels`` on one grid: the
    finest asset's, or ``target_gsd`` (y, x) over its extent."""
    return StacScene(uri, channels=channels, bands=bands, target_gsd=target_gsd)
