"""A corrupt or incomplete nnU-Net folder fails in one clear line naming the file, before any scene."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from models.bundle.sources import model_kind, open_model
from pipeline.errors import BundleError

ROOT = Path(__file__).resolve().parents[4]


@pytest.fixture
def broken(model3d: Path, tmp_path: Path) -> Path:
    """A writable copy of the 3-D model folder (fold 0 only), named as nnU-Net names it."""
    dst = tmp_path / "Dataset900_TinyCT" / model3d.name
    dst.mkdir(parents=True)
    for f in ("dataset.json", "plans.json"):
        shutil.copy(model3d / f, dst / f)
    (dst / "fold_0").mkdir()
    shutil.copy(model3d / "fold_0" / "checkpoint_final.pth", dst / "fold_0" / "checkpoint_final.pth")
    return dst


def _plans(folder: Path, edit) -> None:
    plans = json.loads((folder / "plans.json").read_text())
    edit(plans)
    (folder / "plans.json").write_text(json.dumps(plans))


def test_the_folder_is_an_nnunet_kind_and_reads_its_plans(model3d):
    assert model_kind(model3d) == "nnunet"
    bundle = open_model(model3d, options={"folds": [0]})
    cfg = bundle.config
    assert cfg.inputs.channels == ["CT"]
    assert [c.name for c in cfg.classes] == [
        "background",
        "liver",
        "spleen",
        "kidney",
        "vertebra",
        "back_muscle",
    ]
    assert (cfg.grid, cfg.blend, cfg.orientation, cfg.output_activation, cfg.activation_stage) == (
        "nnunet",
        "nnunet",
        "NATIVE",
        "softmax",
        "inverted",
    )
    assert cfg.inputs.crop_nonzero
    assert cfg.patch_size == [48, 48, 16]  # plans' (z, y, x) patch in the file's (x, y, z) voxel axes
    assert cfg.card["nnunet"]["folds"] == ["0"]


def test_no_plans(broken):
    (broken / "plans.json").unlink()
    with pytest.raises(BundleError, match=r"no plans.json") as err:
        open_model(broken)
    assert str(broken / "plans.json") in str(err.value)


def test_missing_fold(broken):
    with pytest.raises(BundleError, match=r"fold 3 has no checkpoint_final.pth") as err:
        open_model(broken, options={"folds": [0, 3]})
    assert str(broken / "fold_3" / "checkpoint_final.pth") in str(err.value)


def test_missing_best_checkpoint(broken):
    with pytest.raises(BundleError, match=r"no fold_N/checkpoint_best.pth"):
        open_model(broken, options={"checkpoint": "best"})


def test_checkpoint_of_another_configuration(broken, model2d):
    shutil.copy(model2d / "fold_0" / "checkpoint_final.pth", broken / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(BundleError, match=r"trained for configuration '2d'") as err:
        open_model(broken)
    assert "fold_0/checkpoint_final.pth" in str(err.value)


def test_checkpoint_that_does_not_fit_the_plans(broken):
    _plans(broken, lambda p: p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(
        features_per_stage=[8, 16, 32, 64]))  # fmt: skip
    with pytest.raises(BundleError, match=r"has shape") as err:
        open_model(broken)
    assert "checkpoint_final.pth" in str(err.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("builtins.eval", "only classes from dynamic_network_architectures and torch.nn"),
        ("os.system", "only classes from dynamic_network_architectures and torch.nn"),
        ("dynamic_network_architectures.architectures.unet.NoSuchUNet", "does not exist"),
    ],
)
def test_unknown_or_foreign_network_class_is_refused(broken, name, message):
    _plans(
        broken, lambda p: p["configurations"]["3d_fullres"]["architecture"].update(network_class_name=name)
    )
    with pytest.raises(BundleError, match=message):
        open_model(broken).build()


def test_foreign_class_in_arch_kwargs_is_refused(broken):
    _plans(broken, lambda p: p["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"].update(
        nonlin="subprocess.Popen"))  # fmt: skip
    with pytest.raises(BundleError, match=r"architecture argument nonlin 'subprocess.Popen' is refused"):
        open_model(broken).build()


def test_cascade_is_refused_with_a_message_that_says_so(broken, tmp_path):
    cascade = broken.parent / broken.name.replace("3d_fullres", "3d_cascade_fullres")
    broken.rename(cascade)
    _plans(cascade, lambda p: p["configurations"].update(
        {"3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}}))  # fmt: skip
    with pytest.raises(BundleError, match=r"cascade stage .* cascades are not supported"):
        open_model(cascade)


def test_options_of_another_kind_are_refused(broken):
    with pytest.raises(BundleError, match=r"colour do not apply to an nnU-Net"):
        open_model(broken, options={"colour": "red"})


def test_cli_prints_one_line_naming_the_file(broken, unseen, tmp_path):
    (broken / "plans.json").unlink()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        str(unseen),
        str(tmp_path / "out"),
        "--model",
        str(broken),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(broken / "plans.json") in lines[0], proc.stderr


def test_channel_count_that_does_not_match_the_inputs(model3d, unseen, tmp_path):
    from pipeline.job.config import JobConfig
    from pipeline.job.skeleton import run_job

    cases = tmp_path / "two-channel"
    cases.mkdir()
    for i in range(2):
        shutil.copy(unseen / "ts_a_0000.nii.gz", cases / f"ts_a_000{i}.nii.gz")
    config = JobConfig.model_validate(
        {"input": str(cases), "output": str(tmp_path / "out"), "model": str(model3d),
         "model_options": {"folds": [0]}, "execution": {"device": "cpu"}}
    )  # fmt: skip
    (result,) = run_job(config)
    assert result.status == "failed"
    assert (
        "ts_a_0000.nii.gz" in result.reason
        and "2 channels" in result.reason
        and "expects 1 (CT)" in result.reason
    )


def test_region_based_model_is_refused_with_a_message_that_says_so(broken):
    """A region-based model (sigmoid outputs, overlapping regions in dataset.json) is refused, naming it."""
    dataset = json.loads((broken / "dataset.json").read_text())
    dataset["labels"] = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}
    dataset["regions_class_order"] = [1, 2, 3]
    (broken / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(BundleError, match=r"region-based nnU-Net models .* not supported") as err:
        open_model(broken)
    assert str(broken / "dataset.json") in str(err.value)


def test_bundle_info_names_an_nnunet_folder_and_what_it_found(model3d: Path, broken: Path) -> None:
    """``tilewise bundle info``: the kind is nnunet, with the configuration, folds and checkpoint found."""
    from typer.testing import CliRunner

    from flows.cli.app import app

    for folder, folds in ((model3d, "folds 0, 1"), (broken, "folds 0,")):
        res = CliRunner(env={"COLUMNS": "300"}).invoke(app, ["bundle", "info", str(folder)])
        assert res.exit_code == 0, res.output
        rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in res.output.splitlines()
                if line.count("│") >= 3}  # fmt: skip
        assert rows["kind"] == "nnunet", rows
        assert rows["nnU-Net"].startswith(f"configuration 3d_fullres, {folds}"), rows
        assert rows["nnU-Net"].endswith("checkpoint checkpoint_final.pth"), rows
        assert rows["sums"].startswith("nnunet"), rows
