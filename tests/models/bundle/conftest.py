"""A small 2-D U-Net bundle (4 bands, 3 classes) that each test may edit freely."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from models.bundle import CONFIG_NAME, init_bundle

CLASSES = ["land", "water", "cloud"]


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    init_bundle(tmp_path / "b", "unet", 2, 4, CLASSES, patch_size=32, features=[4, 8], name="s2-test")
    return tmp_path / "b"


def read_yaml(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / CONFIG_NAME).read_text())


def write_yaml(folder: Path, data: dict[str, Any]) -> None:
    (folder / CONFIG_NAME).write_text(yaml.safe_dump(data))


def run(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x)
