"""A Sentinel-2 clip with OSM labels (lakes in the west) and the short training run made from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import rasterio
from rasterio.windows import Window

from models.training import TrainConfig

S2 = "geo/derived/S2A_T33UUU_20170216_L1C_B02-B03-B04-B08_10m.tif"
OSM = "geo/derived/S2A_T33UUU_20170216_osm_landcover_10m.tif"
CROP = Window(128, 256, 384, 384)  # col, row, width, height: a western patch with lakes


def _crop(src: Path, dest: Path) -> Path:
    with rasterio.open(src) as ds:
        profile = ds.profile | {
            "width": CROP.width,
            "height": CROP.height,
            "transform": ds.window_transform(CROP),
            "blockxsize": 128,
            "blockysize": 128,
        }
        data = ds.read(window=CROP)
        descriptions = ds.descriptions
    with rasterio.open(dest, "w", **profile) as out:
        out.write(data)
        for i, name in enumerate(descriptions, 1):
            out.set_band_description(i, name or "")
    return dest


@pytest.fixture(scope="module")
def s2_crop(tmp_path_factory: pytest.TempPathFactory, data: Path) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("s2crop")
    return _crop(data / S2, tmp / "s2.tif"), _crop(data / OSM, tmp / "osm.tif")


def train_config(image: Path, labels: Path, out: Path, **over: Any) -> TrainConfig:
    base = dict(
        images=[str(image)],
        labels=[str(labels)],
        out=str(out),
        classes=["land", "water"],
        features=[8, 16],
        channels=["B02", "B03", "B04", "B08"],
        label_map="1-7:0,8:1",
        ignore_value=0,
        val_region="x>=2/3",
        patch_size=[64],
        epochs=2,
        steps_per_epoch=15,
        batch_size=4,
        lr=5e-3,
        progress=False,
        seed=0,
    )
    return TrainConfig(**(base | over))
