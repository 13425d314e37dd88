"""Helpers shared by the hardening tests: small bundles, leftovers and final-file checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.atomic import TEMP_MARK

from ..conftest import DATA

DATA_DIR = str(DATA)  # the real sample files the generated inputs start from

FINAL_PATTERNS = ("{}_labels.*", "{}_report.json", "{}_quicklook.png", "{}_probabilities.*", "{}_polygons.*")


def leftovers(root: Path) -> list[Path]:
    """Temporaries of the atomic writers anywhere under ``root``."""
    return [p for p in root.rglob("*") if TEMP_MARK in p.name]


def finals(out: Path, stem: str) -> list[Path]:
    """Final user-facing files of the scene ``stem`` in ``out``."""
    return [p for pattern in FINAL_PATTERNS for p in out.glob(pattern.format(stem))]


@pytest.fixture(scope="session")
def bundle2(bundle_factory) -> Path:
    """2-D U-Net, 3 input bands, 2 classes, 32-pixel windows: fast on the tiny real rasters."""
    return bundle_factory(2, 3, ["land", "water"], 32, [4, 8])


@pytest.fixture(scope="session")
def bundle3(bundle_factory) -> Path:
    """3-D U-Net, 1 channel, 2 classes, 16-voxel windows."""
    return bundle_factory(3, 1, ["background", "organ"], 16, [4, 8])
