"""smp and TorchGeo models trained briefly on the real S2 scene, saved the way their users save them.

These tests need segmentation-models-pytorch, torchvision and TorchGeo, which only import in the vision
environment (`make test-vision`); elsewhere they are skipped, with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

S2 = "geo/derived/S2A_T33UUU_20170216_L1C_B02-B03-B04-B08_10m.tif"
LANDCOVER = "geo/derived/S2A_T33UUU_20170216_osm_landcover_10m.tif"
BANDS = ["B02", "B03", "B04", "B08"]
CLASSES = ["land", "water"]
IGNORE = 255
TRAIN_WIDTH = 1024  # columns used for training; samples/s2 (the east 512) stays unseen
EAST512 = (
    Path(__file__).resolve().parents[4]
    / "samples"
    / "s2"
    / "S2A_T33UUU_20170216_B02-B03-B04-B08_10m_east512.tif"
)


def vision_import(module: str) -> Any:
    """``module``, or skip: smp/TorchGeo import only beside a matching torchvision (.venv-vision)."""
    import importlib

    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, or torchvision's RuntimeError beside the CPU torch
        pytest.skip(f"{module} cannot be imported here ({type(exc).__name__}); run `make test-vision`")


@pytest.fixture(scope="session")
def s2(data: Path) -> dict[str, np.ndarray]:
    """The scene (float32 bands), its land/water labels (255 unlabelled), and the user's z-score."""
    import rasterio

    with rasterio.open(data / S2) as src:
        image = src.read().astype(np.float32)
    with rasterio.open(data / LANDCOVER) as src:
        cover = src.read(1)
    labels = np.where(cover == 0, IGNORE, (cover == 8).astype(np.uint8)).astype(np.int64)
    mean = image[:, :, :TRAIN_WIDTH].reshape(4, -1).mean(1)
    std = image[:, :, :TRAIN_WIDTH].reshape(4, -1).std(1)
    return {"image": image, "labels": labels, "mean": mean, "std": std}


def normalise(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The user's own preprocessing: per-band z-score."""
    return ((image - mean[:, None, None]) / std[:, None, None]).astype(np.float32)


def crops(s2: dict[str, np.ndarray], n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training crops from the west part, half of them centred on water."""
    rng = np.random.default_rng(seed)
    x = normalise(s2["image"][:, :, :TRAIN_WIDTH], s2["mean"], s2["std"])
    y = s2["labels"][:, :TRAIN_WIDTH]
    water = np.argwhere(y == 1)
    h, w = y.shape
    images, masks = [], []
    for i in range(n):
        if i % 2 == 0:
            cy, cx = water[rng.integers(len(water))]
        else:
            cy, cx = rng.integers(h), rng.integers(w)
        top = int(np.clip(cy - size // 2, 0, h - size))
        left = int(np.clip(cx - size // 2, 0, w - size))
        images.append(x[:, top : top + size, left : left + size])
        masks.append(y[top : top + size, left : left + size])
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks))


def train(model: torch.nn.Module, s2: dict[str, np.ndarray], steps: int, *, seed: int = 0) -> torch.nn.Module:
    """A few Adam steps of cross-entropy on water-rich crops: seconds, yet the labels get structure."""
    torch.manual_seed(seed)
    images, masks = crops(s2, 8 * steps, 64, seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        sl = slice(8 * step, 8 * step + 8)
        loss = torch.nn.functional.cross_entropy(model(images[sl]), masks[sl], ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def assert_structured(labels: np.ndarray, image: np.ndarray) -> None:
    """Both classes predicted, and water where the scene looks like water (NDWI higher than on land)."""
    water = labels == 1
    assert 0.001 < water.mean() < 0.5, f"water fraction {water.mean():.4f}"
    green, nir = image[1].astype(np.float64), image[3].astype(np.float64)
    ndwi = (green - nir) / np.maximum(green + nir, 1)
    assert ndwi[water].mean() > ndwi[~water].mean() + 0.1
