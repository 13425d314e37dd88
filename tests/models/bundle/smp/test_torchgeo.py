"""A TorchGeo SemanticSegmentationTask trained by a Lightning Trainer on the real S2 scene, its checkpoint
imported by tilewise (weights_only, no pickle) and run: the same scores as the task's own model."""

from __future__ import annotations

import pathlib
from pathlib import Path

import numpy as np
import pytest
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
    IGNORE,
    assert_structured,
    crops,
    normalise,
    vision_import,
)
from tests.models.bundle.smp.test_smp import PATCH, _labels, east512, forward, spec_args

pytestmark = pytest.mark.vision
runner = CliRunner(env={"COLUMNS": "200"})
SAMPLES = Path(__file__).resolve().parents[4] / "samples" / "s2"


class _Crops(torch.utils.data.Dataset):
    """Samples as TorchGeo's datamodules hand them to the task: {"image", "mask"}."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "mask": self.masks[i]}


@pytest.fixture(scope="module")
def task_ckpt(s2, tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """Twenty Trainer steps of a U-Net (resnet18) task, saved with ``trainer.save_checkpoint``."""
    trainers = vision_import("torchgeo.trainers")
    lightning = vision_import("lightning.pytorch")
    lightning.seed_everything(0, verbose=False)
    task = trainers.SemanticSegmentationTask(
        model="unet",
        backbone="resnet18",
        weights=None,
        in_channels=4,
        num_classes=2,
        loss="ce",
        ignore_index=IGNORE,
        lr=3e-3,
    )
    images, masks = crops(s2, 168, 64, seed=1)  # 20 steps of 8, and one batch to validate on
    loader = torch.utils.data.DataLoader(_Crops(images[:160], masks[:160]), batch_size=8, shuffle=True)
    val = torch.utils.data.DataLoader(_Crops(images[160:], masks[160:]), batch_size=8)
    root = tmp_path_factory.mktemp("torchgeo")
    trainer = lightning.Trainer(
        max_steps=20,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
    )
    trainer.fit(task, train_dataloaders=loader, val_dataloaders=val)  # its scheduler watches val_loss
    ckpt = root / "task.ckpt"
    trainer.save_checkpoint(ckpt)
    return ckpt, task.model.eval()


@pytest.fixture(scope="module")
def imported(task_ckpt, s2, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "tg"
    res = runner.invoke(
        app, ["bundle", "import", "torchgeo", str(task_ckpt[0]), "--out", str(out), *spec_args(s2)]
    )
    assert res.exit_code == 0, res.output
    return out


def test_imported_task_equals_its_model_and_monai_tiling(task_ckpt, imported, s2, tmp_path) -> None:
    from monai.inferers import sliding_window_inference

    bundle = load_bundle(imported)
    cfg = bundle.config
    assert cfg.architecture["name"] == "smp.Unet" and cfg.architecture["encoder_name"] == "resnet18"
    assert cfg.card["torchgeo"]["model"] == "unet" and cfg.classes[1].name == "water"
    raw = east512()
    pre = Preprocessor(normalization=cfg.inputs.normalization, channels=cfg.inputs.channels)
    x_ours, x_theirs = pre(raw), normalise(raw, s2["mean"], s2["std"])
    windows = [(0, 0), (256, 128), (384, 384)]
    ours = np.stack([x_ours[:, y : y + PATCH, x : x + PATCH] for y, x in windows])
    theirs = np.stack([x_theirs[:, y : y + PATCH, x : x + PATCH] for y, x in windows])
    net = bundle.build()
    np.testing.assert_allclose(forward(net, ours), forward(task_ckpt[1], theirs), atol=1e-5)

    # the blended scores a job uses (the softmax of each window), then the blended logits: a briefly
    # trained task's reach 1e3, where float32 itself resolves only ~1e-4, hence the rtol there
    softmax = lambda t: t.softmax(1)  # noqa: E731
    for activate, tol in ((softmax, {"atol": 1e-4}), (lambda t: t, {"atol": 1e-4, "rtol": 1e-6})):
        tiled = infer_array(
            x_ours, lambda t, a=activate: a(net(t)), patch_size=(PATCH, PATCH), overlap=0.25, block_size=256
        )
        with torch.no_grad():
            ref = sliding_window_inference(
                torch.from_numpy(x_theirs)[None],
                (PATCH, PATCH),
                4,
                lambda t, a=activate: a(task_ckpt[1](t)),
                overlap=0.25,
                mode="gaussian",
                sigma_scale=0.125,
            )[0].numpy()
        np.testing.assert_allclose(tiled, ref, **tol)

    res = runner.invoke(app, ["run", str(SAMPLES), str(tmp_path / "o"), "-m", str(imported)])
    assert res.exit_code == 0, res.output
    assert_structured(_labels(tmp_path / "o"), raw)


def test_the_checkpoint_runs_as_it_is_with_a_sidecar(task_ckpt, imported, s2, tmp_path) -> None:
    ckpt = tmp_path / "task.ckpt"
    ckpt.write_bytes(task_ckpt[0].read_bytes())
    norm = {"kind": "zscore", "mean": s2["mean"].tolist(), "std": s2["std"].tolist()}
    spec = {"channels": BANDS, "classes": CLASSES, "patch_size": PATCH, "gsd": 10, "normalization": norm}
    (tmp_path / SPEC_NAME).write_text(yaml.safe_dump(spec))
    direct = open_model(ckpt)
    assert direct.kind == "torchgeo" and direct.config.inputs == load_bundle(imported).config.inputs
    res = runner.invoke(app, ["bundle", "info", str(ckpt)])
    assert res.exit_code == 0 and "torchgeo" in res.output and "smp.Unet" in res.output, res.output
    res = runner.invoke(app, ["plan", str(SAMPLES), "-m", str(ckpt)])
    assert res.exit_code == 0, res.output
    for model, out in ((ckpt, "direct"), (imported, "imported")):
        res = runner.invoke(app, ["run", str(SAMPLES), str(tmp_path / out), "-m", str(model)])
        assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(_labels(tmp_path / "direct"), _labels(tmp_path / "imported"))


def test_a_checkpoint_that_needs_pickle_is_refused_unless_trusted(task_ckpt, tmp_path) -> None:
    ckpt = torch.load(task_ckpt[0], map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"]["data_root"] = pathlib.PurePosixPath("/data/s2")  # outside the allow-list
    path = tmp_path / "pickled.ckpt"
    torch.save(ckpt, path)
    args = [
        "bundle",
        "import",
        "torchgeo",
        str(path),
        "--out",
        str(tmp_path / "b"),
        "--classes",
        "land,water",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1, res.output
    line = " ".join(res.output.split())
    assert str(path) in line and "needs full unpickling" in line and "--trust-pickle" in line
    res = runner.invoke(app, [*args, "--trust-pickle"])
    assert res.exit_code == 0, res.output
    x = np.random.default_rng(0).normal(size=(1, 4, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(
        forward(load_bundle(tmp_path / "b").build(), x), forward(task_ckpt[1], x), atol=1e-5
    )


def test_an_unsupported_torchgeo_model_is_named(task_ckpt, tmp_path) -> None:
    ckpt = torch.load(task_ckpt[0], map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"]["model"] = "fcn"  # TorchGeo's own FCN is not an smp network
    path = tmp_path / "fcn.ckpt"
    torch.save(ckpt, path)
    res = runner.invoke(app, ["bundle", "import", "torchgeo", str(path), "--out", str(tmp_path / "b")])
    line = " ".join(res.output.split())
    assert res.exit_code != 0 and "TorchGeo model 'fcn' is not supported" in line and str(path) in line
