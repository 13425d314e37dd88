"""The real Sentinel-2 sample as public catalogues hold it: one COG per band, NIR at 20 m, a STAC Item."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pystac
import rasterio
from pystac.extensions.eo import Band, EOExtension
from rasterio.enums import Resampling

from tests.pipeline.formats.sample_data import S2_STACK, need

BANDS = (("B02", "blue"), ("B03", "green"), ("B04", "red"), ("B08", "nir"))  # the stack's order
ACQUIRED = datetime(2017, 2, 16, 10, 21, 1, tzinfo=UTC)


def split_s2(out: Path, *, eo: bool = True, coarse: dict[str, int] | None = None) -> Path:
    """Write ``out/B0x.tif`` per band (``coarse``: band -> decimation, NIR at 20 m by default) and
    ``out/item.json``, assets keyed by common name; ``eo=False`` leaves band names out (keys only)."""
    need(S2_STACK)
    coarse = {"B08": 2} if coarse is None else coarse
    out.mkdir(parents=True, exist_ok=True)
    item = pystac.Item("S2A_T33UUU_20170216", None, None, ACQUIRED, {})
    with rasterio.open(S2_STACK) as ds:
        for index, (name, common) in enumerate(BANDS, start=1):
            f = coarse.get(name, 1)
            shape = (ds.height // f, ds.width // f)
            data = ds.read(index, out_shape=shape, resampling=Resampling.average)
            grid = ds.transform * ds.transform.scale(f, f)
            profile = {"driver": "COG", "height": shape[0], "width": shape[1], "count": 1,
                       "dtype": data.dtype,
                       "crs": ds.crs, "transform": grid, "nodata": 0, "compress": "deflate"}  # fmt: skip
            with rasterio.open(out / f"{name}.tif", "w", **profile) as dst:
                dst.write(data, 1)
            asset = pystac.Asset(f"./{name}.tif", media_type=pystac.MediaType.COG, roles=["data"])
            item.add_asset(common, asset)
            if eo:
                EOExtension.ext(asset, add_if_missing=True).apply(
                    bands=[Band.create(name=name, common_name=common)]
                )
    item.set_self_href(str(out / "item.json"))
    item.save_object(include_self_link=False)
    return out / "item.json"
