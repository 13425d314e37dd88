"""The training loop on real data: a short run learns and writes a complete bundle, bad inputs are
refused before training starts, and ``tilewise train`` writes a bundle ``bundle info`` reads."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from models.bundle import load_bundle
from models.training import train, validate_model
from models.training.sampling import TrainScene
from pipeline.core.box import Box
from pipeline.errors import ConfigError, InputError
from pipeline.job.evaluate import parse_region

from .conftest import OSM, train_config


def test_short_training_learns_and_writes_a_complete_bundle(s2_crop, tmp_path):
    image, labels = s2_crop
    result = train(train_config(image, labels, tmp_path / "b", command="pytest"))
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.9 * first, result.losses

    bundle = load_bundle(tmp_path / "b")
    cfg = bundle.config
    with rasterio.open(image) as ds:
        raw = ds.read().astype(np.float64)
    train_part = raw[:, :, : parse_region("x>=2/3", raw.shape[1:]).start[1]]  # the western two thirds
    norm = cfg.inputs.normalization
    assert norm.kind == "zscore"
    np.testing.assert_allclose(norm.mean, train_part.reshape(4, -1).mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(norm.std, train_part.reshape(4, -1).std(axis=1), rtol=1e-6)
    assert not np.allclose(norm.mean, raw.reshape(4, -1).mean(axis=1), rtol=1e-6)  # held-out not used
    assert cfg.inputs.channels == ["B02", "B03", "B04", "B08"]
    assert [c.name for c in cfg.classes] == ["land", "water"]
    assert cfg.patch_size == [64, 64] and cfg.target_spacing == [10.0, 10.0]
    card = cfg.card
    assert set(card["metrics"]["validation"]) == {"land", "water"}
    assert card["training"]["validation_region"] == "x>=2/3"
    assert card["training"]["seconds"] > 0 and card["training"]["command"] == "pytest"
    assert len(result.validation) == 2 and result.best["epoch"] in (1, 2)


def test_labels_off_the_image_grid_are_refused(s2_crop, data, tmp_path):
    image, _ = s2_crop
    with pytest.raises(InputError, match="grid"):
        train(train_config(image, data / OSM, tmp_path / "b"))


def test_unmapped_label_values_need_a_label_map(s2_crop, tmp_path):
    image, labels = s2_crop
    with pytest.raises(InputError, match="label map"):
        train(train_config(image, labels, tmp_path / "b", label_map=None, ignore_value=0))


def test_refused_before_any_data_is_read(tmp_path):
    cfg = train_config(tmp_path / "missing.tif", tmp_path / "missing.tif", tmp_path / "b")
    with pytest.raises(ConfigError, match=">= 1"):
        train(train_config(tmp_path / "x.tif", tmp_path / "y.tif", tmp_path / "b", epochs=0))
    (tmp_path / "b").mkdir()
    with pytest.raises(ConfigError, match="overwrite"):
        train(cfg)
    with pytest.raises(ConfigError, match="class names"):
        train(train_config(tmp_path / "x.tif", tmp_path / "y.tif", tmp_path / "c", classes=None))


class _Oracle(torch.nn.Module):
    """Scores the true class of every pixel highest: validation must then find a perfect Dice."""

    def __init__(self, labels: np.ndarray) -> None:
        super().__init__()
        self.labels = torch.from_numpy(labels.astype(np.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the image carries the pixel's flat index in its only channel, so a patch finds its labels
        idx = x[:, 0].long()
        return torch.nn.functional.one_hot(self.labels.reshape(-1)[idx], 2).movedim(-1, 1).float() * 10


def test_validate_model_scores_the_held_out_box_only():
    labels = (np.arange(48 * 40).reshape(48, 40) % 7 == 0).astype(np.uint8)
    image = np.arange(labels.size, dtype=np.float32).reshape(1, *labels.shape)
    val = Box((24, 0), (48, 40))
    scene = TrainScene("s", image, labels, [Box((0, 0), (24, 40))], val)
    conf = validate_model(_Oracle(labels), [scene], (16, 16), 2, overlap=0.25, batch_size=2)
    held_out = labels[val.slices()]
    assert conf[:, :2].sum() == held_out.size  # the training box is never scored
    assert conf[0, 0] == (held_out == 0).sum() and conf[1, 1] == (held_out == 1).sum()
    assert conf[0, 1] == conf[1, 0] == 0


def test_train_command_writes_a_bundle_that_bundle_info_reads(s2_crop, tmp_path):
    from typer.testing import CliRunner

    from flows.cli.app import app
    from flows.cli.bundle import bundle_app

    image, labels = s2_crop
    out = tmp_path / "cli-bundle"
    args = [
        "train",
        "--images",
        str(image),
        "--labels",
        str(labels),
        "--out",
        str(out),
        "--classes",
        "land,water",
        "--features",
        "8,16",
        "--label-map",
        "1-7:0,8:1",
        "--ignore-value",
        "0",
        "--val-region",
        "x>=2/3",
        "--patch-size",
        "64",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "3",
        "--batch-size",
        "2",
        "--quiet",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    card = load_bundle(out).config.card
    assert card["training"]["command"].startswith("tilewise train")
    assert load_bundle(out).config.inputs.channels == [
        "B02 blue 490nm",
        "B03 green 560nm",
        "B04 red 665nm",
        "B08 NIR 842nm",
    ]
    assert CliRunner().invoke(bundle_app, ["info", str(out)]).exit_code == 0
    again = CliRunner().invoke(app, args)  # refuses to replace without --overwrite
    assert again.exit_code == 2 and "overwrite" in again.output
