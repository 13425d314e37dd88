"""Session-scoped MONAI bundles (trained once, a few seconds each) and the peer's own runner."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.models.bundle.monai_bundle import zoo

LOAD = [
    {"_target_": "LoadImaged", "keys": "image"},
    {"_target_": "EnsureChannelFirstd", "keys": "image"},
    {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
]
SOFTMAX_ARGMAX = [
    {"_target_": "Activationsd", "keys": "pred", "softmax": True},
    {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
]
SAVE_BOTH = [
    {"_target_": "Activationsd", "keys": "pred", "softmax": True},
    zoo.save_image("prob", "float32"),
    {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    zoo.save_image("seg", "uint8"),
]
PATCH = [48, 48, 16]
TRAIN_PATCH = (32, 32, 16)
STEPS = 40  # seconds on 2 cores: enough for organ-shaped labels, not for good ones


def ct_window(x: np.ndarray) -> np.ndarray:
    w = zoo.CT_WINDOW
    return np.clip((x - w["a_min"]) / (w["a_max"] - w["a_min"]), 0.0, 1.0)


def nonzero_zscore(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    nz = x != 0
    out = np.zeros_like(x)
    out[nz] = (x[nz] - x[nz].mean()) / x[nz].std()
    return out


@pytest.fixture(scope="session")
def ct_state(data: Path) -> dict:
    """Trained on the CT mirrored left-right; the original CT stays unseen."""
    image, labels = zoo.ras(data / zoo.CT)[::-1], zoo.classes_of(zoo.ras(data / zoo.CT_SEG))[::-1]
    return zoo.train(ct_window(image.astype(np.float64)), labels.copy(), steps=STEPS, patch=TRAIN_PATCH)


@pytest.fixture(scope="session")
def mr_state(data: Path) -> dict:
    """Trained on the MR mirrored front-back; the original MR stays unseen."""
    image, labels = zoo.ras(data / zoo.MR)[:, ::-1], zoo.classes_of(zoo.ras(data / zoo.MR_SEG))[:, ::-1]
    return zoo.train(nonzero_zscore(image), labels.copy(), steps=STEPS, patch=TRAIN_PATCH, seed=1)


def ct_config(*, spacing: list[float] | None = None, post: list[dict] | None = None) -> dict:
    pre = list(LOAD)
    if spacing:
        pre.append({"_target_": "Spacingd", "keys": "image", "pixdim": spacing, "mode": "bilinear"})
    pre += [
        {"_target_": "ScaleIntensityRanged", "keys": "image", **zoo.CT_WINDOW},
        {"_target_": "EnsureTyped", "keys": "image"},
    ]
    inferer = {
        "_target_": "SlidingWindowInferer",
        "roi_size": PATCH,
        "sw_batch_size": 4,
        "overlap": 0.5,
        "mode": "gaussian",
    }
    return copy.deepcopy(zoo.inference(pre, inferer, post or SAVE_BOTH))  # tests may edit it


@pytest.fixture(scope="session")
def ct_bundle(tmp_path_factory: pytest.TempPathFactory, ct_state: dict) -> Path:
    out = tmp_path_factory.mktemp("monai") / "ct_organs"
    return zoo.write_bundle(out, "ct_organs", ct_state, ct_config(), PATCH)


@pytest.fixture(scope="session")
def mr_bundle(tmp_path_factory: pytest.TempPathFactory, mr_state: dict) -> Path:
    pre = [
        *LOAD,
        {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
        {"_target_": "EnsureTyped", "keys": "image"},
    ]
    inferer = {"_target_": "SlidingWindowInferer", "roi_size": PATCH, "sw_batch_size": 2, "overlap": 0.25}
    keep = {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [1, 2, 3]}
    post = [
        *SOFTMAX_ARGMAX[:1],
        zoo.save_image("prob", "float32"),
        *SOFTMAX_ARGMAX[1:],
        keep,
        zoo.save_image("seg", "uint8"),
    ]
    out = tmp_path_factory.mktemp("monai") / "mr_organs"
    return zoo.write_bundle(out, "mr_organs", mr_state, zoo.inference(pre, inferer, post), PATCH)


@pytest.fixture(scope="session")
def ct_case(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """A folder holding the unseen CT, as both tools take a folder of cases."""
    folder = tmp_path_factory.mktemp("ct_cases")
    shutil.copy(data / zoo.CT, folder / "ct.nii.gz")
    return folder


@pytest.fixture(scope="session")
def mr_case(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    folder = tmp_path_factory.mktemp("mr_cases")
    shutil.copy(data / zoo.MR, folder / "mr.nii.gz")
    return folder


def monai_run(bundle: Path, cases: Path, out: Path, *overrides: str) -> Path:
    """``python -m monai.bundle run`` on the bundle, as a MONAI user runs it; returns the output folder."""
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(bundle / "configs" / "inference.json"),
        "--meta_file",
        str(bundle / "configs" / "metadata.json"),
        "--bundle_root",
        str(bundle),
        "--dataset_dir",
        str(cases),
        "--output_dir",
        str(out),
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out
