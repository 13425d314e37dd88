"""Shared fixtures: real data paths, small random bundles, isolated Dask/Prefect state."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.exists():  # CI clones next to shared/ too; allow an override
    DATA = Path(os.environ.get("TILEWISE_DATA", "/work/shared/data"))

warnings.filterwarnings("ignore", message="Use @ matmul", category=PendingDeprecationWarning)


@pytest.fixture(scope="session")
def data() -> Path:
    if not DATA.exists():
        pytest.fail(f"real test data not found at {DATA}; set TILEWISE_DATA")
    return DATA


@pytest.fixture(autouse=True, scope="session")
def _isolated_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.mktemp("env")
    os.environ.setdefault("DASK_TEMPORARY_DIRECTORY", str(base / "dask"))
    os.environ.setdefault("PREFECT_HOME", str(base / "prefect"))
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TILEWISE_CACHE_DIR", str(base / "cache"))  # the plan's measured baseline


@pytest.fixture(scope="session")
def bundle_factory(tmp_path_factory: pytest.TempPathFactory):
    """Random-weight bundles (deterministic seed), cached per signature."""
    from models.bundle import init_bundle

    made: dict[tuple, Path] = {}

    def make(
        dims: int,
        channels: int,
        classes: list[str],
        patch: int,
        features: list[int] | None = None,
        arch: str = "unet",
    ) -> Path:
        key = (dims, channels, tuple(classes), patch, tuple(features or ()), arch)
        if key not in made:
            out = tmp_path_factory.mktemp("bundle") / "b"
            init_bundle(
                out,
                arch=arch,
                spatial_dims=dims,
                in_channels=channels,
                classes=classes,
                patch_size=patch,
                features=features,
            )
            made[key] = out
        return made[key]

    return make
