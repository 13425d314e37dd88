"""`tilewise train` and `tilewise evaluate` (flows/cli/train.py): what the commands add around training
and scoring (the card's command line, option checks, the --min-dice gate), with the work itself
replaced; tests/models/training and tests/pipeline/job run the real thing."""

from __future__ import annotations

import json
import math
import shlex
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import models.training
import pipeline.job.evaluate
from flows.cli.app import app

runner = CliRunner(env={"COLUMNS": "200"})


@pytest.fixture
def trained(monkeypatch, tmp_path):
    """Replaces training; returns the configs it was given."""
    seen: list = []

    def train(cfg):
        seen.append(cfg)
        bundle = SimpleNamespace(config=SimpleNamespace(name="w"), path=tmp_path / "w", hash="f" * 64)
        per_class = {"land": {"dice": 0.9, "iou": 0.8, "support": 10.0}}
        return SimpleNamespace(bundle=bundle, best={"epoch": 2, "per_class": per_class}, seconds=3.0)

    monkeypatch.setattr(models.training, "train", train)
    return seen


def test_train_records_the_command_as_a_user_would_retype_it(trained):
    args = ["train", "-i", "a.tif", "-i", "b c.tif", "-l", "a_gt.tif", "-l", "b_gt.tif", "--out", "w"]
    args += ["--classes", "land,water", "--epochs", "3", "--no-rot90", "--quiet", "--patch-size", "64x64"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    (cfg,) = trained
    expected = "tilewise train --images a.tif --images 'b c.tif' --labels a_gt.tif --labels b_gt.tif"
    expected += " --out w --classes land,water --patch-size 64x64 --epochs 3 --no-rot90 --quiet"
    assert cfg.command == expected and shlex.split(cfg.command)[0] == "tilewise"
    assert cfg.images == ["a.tif", "b c.tif"] and cfg.classes == ["land", "water"]
    assert cfg.patch_size == [64, 64] and cfg.rot90 is False and cfg.progress is False
    assert "epoch 2" in res.output and "0.9000" in res.output and "sha256 ffffffffffff" in res.output


def test_train_checks_options_before_training(trained):
    res = runner.invoke(app, ["train", "-i", "a.tif", "-i", "b.tif", "-l", "a_gt.tif", "--out", "w"])
    assert res.exit_code == 2 and "2 --images but 1 --labels" in res.output
    res = runner.invoke(app, ["train", "-i", "a.tif", "-l", "a_gt.tif", "--out", "w", "--features", "8,y"])
    assert res.exit_code == 2 and "comma-separated integers" in res.output
    assert trained == []


SCORES = {
    "bundle": "w",
    "region": "x>=2/3",
    "per_class": {
        "land": {"dice": 0.95, "iou": 0.9, "support": 100.0, "fp": 3.0, "fn": 2.0},
        "water": {"dice": 0.8, "iou": 0.7, "support": 50.0, "fp": 5.0, "fn": 4.0},
        "cloud": {"dice": math.nan, "iou": math.nan, "support": 0.0, "fp": 0.0, "fn": 0.0},
    },
    "pixel_accuracy": 0.93,
    "seconds": 1.5,
}


@pytest.fixture
def scored(monkeypatch):
    """Replaces scoring; returns the calls it got."""
    calls: list = []

    def evaluate_bundle(bundle, images, labels, region, label_map, *, ignore_value, overrides):
        calls.append((images, labels, region, overrides))
        return SCORES

    monkeypatch.setattr(pipeline.job.evaluate, "evaluate_bundle", evaluate_bundle)
    return calls


EVALUATE = ["evaluate", "w", "-i", "a.tif", "-l", "a_gt.tif", "--region", "x>=2/3"]


def test_evaluate_prints_scores_and_writes_json(scored, tmp_path):
    out = tmp_path / "s.json"
    res = runner.invoke(app, [*EVALUATE, "--batch-size", "2", "--json", str(out), "--min-dice", "water=0.8"])
    assert res.exit_code == 0, res.output
    assert scored == [(["a.tif"], ["a_gt.tif"], "x>=2/3", {"execution.batch_size": 2})]
    assert "0.9500" in res.output and "n/a" in res.output and "pixel accuracy 0.9300" in res.output
    assert json.loads(out.read_text())["per_class"]["water"]["dice"] == 0.8


def test_evaluate_gates_on_min_dice(scored):
    res = runner.invoke(app, [*EVALUATE, "--min-dice", "land=0.9", "--min-dice", "water=0.81"])
    assert res.exit_code == 1 and "below --min-dice" in res.output and "water" in res.output
    res = runner.invoke(app, [*EVALUATE, "--min-dice", "cloud=0.1"])  # no pixels: nan is below any gate
    assert res.exit_code == 1


def test_evaluate_refuses_bad_gates(scored):
    res = runner.invoke(app, [*EVALUATE, "--min-dice", "sky=0.5"])
    assert res.exit_code == 2 and res.output.startswith("error: --min-dice names unknown classes ['sky']")
    res = runner.invoke(app, [*EVALUATE, "--min-dice", "water"])
    assert res.exit_code == 2 and "expected CLASS=VALUE" in res.output
    assert len(scored) == 1  # the malformed gate is refused before scoring
