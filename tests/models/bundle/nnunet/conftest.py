"""The committed nnU-Net model folder (remade by data/make_model.py) and unseen cases cut from real CT."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.models.bundle.nnunet.cases import write_unseen

RESULTS = Path(os.environ.get("TILEWISE_NNUNET_RESULTS", Path(__file__).parent / "data" / "results"))
RESULTS = RESULTS / "Dataset900_TinyCT"
MODEL_3D = RESULTS / "nnUNetTrainer__nnUNetSmallPlans__3d_fullres"
MODEL_2D = RESULTS / "nnUNetTrainer__nnUNetSmallPlans__2d"


@pytest.fixture(scope="session")
def model3d() -> Path:
    assert (MODEL_3D / "fold_0" / "checkpoint_final.pth").is_file(), "run data/make_model.py"
    return MODEL_3D


@pytest.fixture(scope="session")
def model2d() -> Path:
    assert (MODEL_2D / "fold_0" / "checkpoint_final.pth").is_file(), "run data/make_model.py"
    return MODEL_2D


@pytest.fixture(scope="session")
def unseen(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ts_a, ts_b (plans' spacing) as nnU-Net names them: CASE_0000.nii.gz."""
    folder = tmp_path_factory.mktemp("nnunet-cases")
    write_unseen(data, folder)
    return folder


def dice(a, b, label: int) -> float:
    x, y = a == label, b == label
    total = int(x.sum() + y.sum())
    return 1.0 if total == 0 else 2.0 * int((x & y).sum()) / total
