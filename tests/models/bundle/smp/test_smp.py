"""A segmentation-models-pytorch U-Net trained on the real S2 scene, saved with ``save_pretrained``,
imported and run by tilewise: the same scores as its own forward, the same tiling as MONAI's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from typer.testing import CliRunner

from flows.cli.app import app
from models.bundle import load_bundle
from models.bundle.smp import SPEC_NAME
from models.bundle.sources import open_model
from pipeline import infer_array
from pipeline.execution.preprocess import Preprocessor
from tests.models.bundle.smp.conftest import (
    BANDS,
    CLASSES,
    EAST512,
    assert_structured,
    normalise,
    train,
    vision_import,
)

pytestmark = pytest.mark.vision
runner = CliRunner(env={"COLUMNS": "200"})
PATCH = 128


@pytest.fixture(scope="module")
def trained(s2, tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A small U-Net (resnet18 encoder, 3 stages) after 25 steps, saved as its users do."""
    smp = vision_import("segmentation_models_pytorch")
    torch.manual_seed(0)
    model = smp.Unet(
        "resnet18",
        encoder_weights=None,
        in_channels=4,
        classes=2,
        encoder_depth=3,
        decoder_channels=(32, 16, 8),
    )
    train(model, s2, steps=25)
    folder = tmp_path_factory.mktemp("smp") / "s2-unet"
    model.save_pretrained(str(folder))
    return folder, model


def spec_args(s2) -> list[str]:
    floats = lambda v: ",".join(repr(float(x)) for x in v)  # noqa: E731
    return [
        "--bands",
        ",".join(BANDS),
        "--mean",
        floats(s2["mean"]),
        "--std",
        floats(s2["std"]),
        "--classes",
        ",".join(CLASSES),
        "--patch-size",
        str(PATCH),
        "--gsd",
        "10",
    ]


@pytest.fixture(scope="module")
def imported(trained, s2, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "s2-unet"
    res = runner.invoke(app, ["bundle", "import", "smp", str(trained[0]), "--out", str(out), *spec_args(s2)])
    assert res.exit_code == 0, res.output
    return out


def east512() -> np.ndarray:
    with rasterio.open(EAST512) as src:
        return src.read().astype(np.float32)


def _labels(out: Path) -> np.ndarray:
    (tif,) = [p for p in out.rglob("*.tif") if "prob" not in p.name and ".tw-" not in str(p)]
    with rasterio.open(tif) as src:
        return src.read(1)


def forward(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_imported_scores_equal_the_modules_forward(trained, imported, s2) -> None:
    bundle = load_bundle(imported)
    cfg = bundle.config
    assert cfg.architecture["name"] == "smp.Unet" and "encoder_weights" not in cfg.architecture
    assert (imported / "weights.safetensors").is_file() and cfg.target_spacing == [10.0, 10.0]
    raw = east512()
    starts = [(0, 0), (128, 300), (384, 384), (200, 40)]
    windows = np.stack([raw[:, y : y + PATCH, x : x + PATCH] for y, x in starts])
    pre = Preprocessor(normalization=cfg.inputs.normalization, channels=cfg.inputs.channels)
    ours = np.stack([pre(w) for w in windows])
    theirs = np.stack([normalise(w, s2["mean"], s2["std"]) for w in windows])
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(forward(bundle.build(), ours), forward(trained[1], theirs), atol=1e-5)


def test_tiled_scores_equal_monai_and_the_run_labels_have_structure(trained, imported, s2, tmp_path) -> None:
    from monai.inferers import sliding_window_inference

    bundle = load_bundle(imported)
    raw = east512()
    pre = Preprocessor(
        normalization=bundle.config.inputs.normalization, channels=bundle.config.inputs.channels
    )
    ours = infer_array(pre(raw), bundle.build(), patch_size=(PATCH, PATCH), overlap=0.25, block_size=256)
    with torch.no_grad():
        x = torch.from_numpy(normalise(raw, s2["mean"], s2["std"]))[None]
        theirs = sliding_window_inference(
            x, (PATCH, PATCH), 4, trained[1], overlap=0.25, mode="gaussian", sigma_scale=0.125
        )[0].numpy()
        probs = sliding_window_inference(
            x,
            (PATCH, PATCH),
            4,
            lambda t: trained[1](t).softmax(1),
            overlap=0.25,
            mode="gaussian",
            sigma_scale=0.125,
        )[0].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)

    res = runner.invoke(app, ["run", str(EAST512), str(tmp_path / "out"), "-m", str(imported)])
    assert res.exit_code == 0, res.output
    labels = _labels(tmp_path / "out")
    agree = (labels == probs.argmax(0)).mean()
    assert agree > 0.999, agree  # argmax of MONAI's blended probabilities; ties aside, identical
    assert_structured(labels, raw)


def test_the_folder_runs_as_it_is_with_a_sidecar(trained, imported, s2, tmp_path) -> None:
    folder = tmp_path / "s2-unet"
    shutil.copytree(trained[0], folder)
    spec = {
        "channels": BANDS,
        "classes": CLASSES,
        "patch_size": PATCH,
        "gsd": 10,
        "normalization": {"kind": "zscore", "mean": s2["mean"].tolist(), "std": s2["std"].tolist()},
    }
    (folder / SPEC_NAME).write_text(yaml.safe_dump(spec))
    direct = open_model(folder)
    assert direct.kind == "smp" and direct.config.inputs == load_bundle(imported).config.inputs
    res = runner.invoke(app, ["bundle", "info", str(folder)])
    assert res.exit_code == 0 and "smp.Unet" in res.output and "water" in res.output, res.output
    res = runner.invoke(app, ["plan", str(EAST512), "-m", str(folder)])
    assert res.exit_code == 0, res.output
    for model, out in ((folder, "direct"), (imported, "imported")):
        res = runner.invoke(app, ["run", str(EAST512), str(tmp_path / out), "-m", str(model)])
        assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(_labels(tmp_path / "direct"), _labels(tmp_path / "imported"))
    # Dask worker processes given the folder as it is (the job saves it once as a bundle for them)
    res = runner.invoke(
        app,
        [
            "run",
            str(EAST512),
            str(tmp_path / "dask"),
            "-m",
            str(folder),
            "--workers",
            "2",
            "--block-size",
            "256",
        ],
    )
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(_labels(tmp_path / "dask"), _labels(tmp_path / "direct"))


def test_deeplabv3plus_imports_with_the_same_forward(tmp_path) -> None:
    smp = vision_import("segmentation_models_pytorch")
    torch.manual_seed(1)
    model = smp.DeepLabV3Plus("resnet18", encoder_weights=None, in_channels=4, classes=3).eval()
    model.save_pretrained(str(tmp_path / "dl"))
    res = runner.invoke(
        app,
        [
            "bundle",
            "import",
            "smp",
            str(tmp_path / "dl"),
            "--out",
            str(tmp_path / "b"),
            "--classes",
            "a,b,c",
            "--scale",
            "0.0001",
        ],
    )
    assert res.exit_code == 0, res.output
    x = np.random.default_rng(0).normal(size=(2, 4, 128, 128)).astype(np.float32)
    np.testing.assert_allclose(forward(load_bundle(tmp_path / "b").build(), x), forward(model, x), atol=1e-5)


def _edited(trained: tuple[Path, torch.nn.Module], tmp_path: Path, **changes: object) -> Path:
    folder = tmp_path / "edited"
    shutil.copytree(trained[0], folder)
    conf = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**conf, **changes}))
    return folder


@pytest.mark.parametrize(
    ("changes", "args", "expected"),
    [
        ({}, ["--bands", "B02,B03,B04"], "3 bands given but the model takes 4 input channels"),
        ({}, ["--classes", "a,b,c"], "3 classes given but the model has 2 output channels"),
        ({}, ["--patch-size", "100"], "not a multiple of the encoder's output stride 8"),
        ({"_model_class": "Unett"}, [], "unknown architecture 'smp.Unett'"),
        ({"encoder_name": "resnet19"}, [], "cannot build architecture 'smp.Unet': Wrong encoder name"),
        ({"in_channels": 3}, [], "has shape (64, 4, 7, 7) but the architecture expects (64, 3, 7, 7)"),
    ],
)
def test_bad_models_fail_with_one_line_naming_the_file(trained, tmp_path, changes, args, expected) -> None:
    folder = _edited(trained, tmp_path, **changes)
    res = runner.invoke(app, ["bundle", "import", "smp", str(folder), "--out", str(tmp_path / "b"), *args])
    assert res.exit_code != 0
    line = " ".join(res.output.split())
    assert expected in line and str(folder) in line and len(res.output.strip().splitlines()) == 1, res.output


def test_missing_weights_are_named(trained, tmp_path) -> None:
    folder = _edited(trained, tmp_path)
    (folder / "model.safetensors").unlink()
    res = runner.invoke(app, ["bundle", "import", "smp", str(folder), "--out", str(tmp_path / "b")])
    assert res.exit_code != 0 and "no model.safetensors" in res.output and str(folder) in res.output
