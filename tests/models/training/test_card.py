"""The model card: what a trained bundle says about its data, its scores and how to repeat its run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.bundle import WEIGHTS_NAME, init_bundle, load_bundle
from models.training import TrainConfig, model_card, update_card
from models.training.sampling import PatchSampler, TrainScene
from pipeline.core.box import Box
from pipeline.errors import BundleError


def _sampler() -> PatchSampler:
    labels = np.zeros((8, 8), np.uint8)
    labels[:2] = 1  # a quarter water
    scene = TrainScene("s", np.zeros((1, 8, 8), np.float32), labels, [Box.from_shape((8, 8))])
    return PatchSampler([scene], (4, 4), 2)


def test_card_records_data_scores_and_settings(tmp_path):
    cfg = TrainConfig(
        images=["a.tif"], labels=["a_lab.tif"], out=str(tmp_path / "b"), classes=["land", "water"],
        epochs=3, steps_per_epoch=5, lr=1e-3, time_limit_s=60, ema_decay=0.99, licenses=["CC0"],
        intensity_per_channel=True, val_region="x>=2/3", command="tilewise train ...",
    )  # fmt: skip
    config = {
        "architecture": {"name": "unet"},
        "classes": [{"name": "land"}, {"name": "water"}],
        "patch_size": [64, 64],
        "spatial_dims": 2,
    }
    per_class = {
        "land": {"dice": 0.912345, "iou": 0.8, "support": 100.0},
        "water": {"dice": 0.5, "iou": 1 / 3, "support": 7.0},
    }
    best = {"score": 0.7061725, "epoch": 2, "per_class": per_class}
    history = [{"epoch": 1, "mean_dice": 0.61234}, {"epoch": 2, "mean_dice": 0.7061725}]
    drawn = np.array([3, 1, 0])  # centres drawn per class, then uniform draws
    card = model_card(cfg, config, best, history, _sampler(), drawn, 15, 3, 12.34, torch.device("cpu"))
    assert card["description"] == "unet trained by tilewise train on 1 scene(s)."
    assert card["data"] == ["a.tif"] and card["license"] == "CC0"
    metrics = card["metrics"]
    assert metrics["validation"]["land"] == {"dice": 0.9123, "iou": 0.8, "support": 100}
    assert metrics["validation_mean_dice"] == 0.7062 and metrics["best_epoch"] == 2
    training = card["training"]
    assert training["seconds"] == 12.3 and training["steps"] == 15 and training["patch_size"] == [64, 64]
    assert (
        "or 60 s, whichever ends first" in training["optimizer"]
        and "EMA (decay 0.99)" in training["optimizer"]
    )
    assert training["augmentation"] == (
        "flips on axes [0, 1], 90° rotations, per-channel intensity scale/shift ±0.1 (MONAI)"
    )
    assert training["labelled_class_fraction"] == {"land": 0.75, "water": 0.25}
    assert training["patch_centre_class_fraction"] == {"land": 0.75, "water": 0.25}
    assert training["validation_history"] == [
        {"epoch": 1, "mean_dice": 0.6123},
        {"epoch": 2, "mean_dice": 0.7062},
    ]
    assert training["command"] == "tilewise train ..." and training["validation_region"] == "x>=2/3"
    no_val = {"score": float("nan"), "epoch": 3, "per_class": {}}
    card = model_card(cfg, config, no_val, [], _sampler(), drawn, 15, 3, 1.0, torch.device("cpu"))
    assert card["metrics"]["validation_mean_dice"] is None  # NaN is not valid YAML for readers


def test_update_card_merges_one_level_deep_and_keeps_the_weights(tmp_path):
    b = init_bundle(tmp_path / "b", "unet", 2, 1, ["a", "b"], features=[2, 4])
    before = load_file(str(b.path / WEIGHTS_NAME))
    updated = update_card(b.path, {"metrics": {"test": {"dice": 0.5}}, "license": "CC0"})
    card = load_bundle(b.path).config.card
    assert card["metrics"] == {"test": {"dice": 0.5}} and card["license"] == "CC0"
    assert card["description"].startswith("Randomly initialised")  # untouched keys stay
    after = load_file(str(updated.path / WEIGHTS_NAME))
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)
    assert updated.hash != b.hash  # the card is part of what identifies the bundle


def test_update_card_refuses_a_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        update_card(tmp_path / "nope", {"license": "x"})
