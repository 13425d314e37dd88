"""The description of an smp/TorchGeo model (its YAML file), and what .venv says about smp models.

These run in the main environment, where segmentation-models-pytorch cannot be imported."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from flows.cli.app import app
from models.bundle.save import config_yaml
from models.bundle.smp.spec import make_config, read_spec
from pipeline.errors import BundleError

ARCH = {"name": "smp.Unet", "encoder_name": "resnet18", "in_channels": 4, "out_channels": 2}


def test_a_spec_file_with_an_unknown_key_is_named(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("channels: [B02, B03, B04, B08]\nbands_indexes: [1, 2, 3, 4]\n")
    with pytest.raises(BundleError, match="unknown keys bands_indexes") as err:
        read_spec(spec)
    assert err.value.path == str(spec)


def test_a_spec_becomes_the_bundle_config() -> None:
    spec = {
        "channels": ["B02", "B03", "B04", "B08"],
        "classes": ["land", {"name": "water", "color": "#1f78b4"}],
        "normalization": {"kind": "scale", "factor": 1e-4},
        "gsd": 10,
        "patch_size": 128,
    }
    cfg = make_config(ARCH, spec, name="m", where="m/config.json", card={})
    assert cfg.architecture == ARCH and cfg.target_spacing == [10.0, 10.0] and cfg.patch_size == [128, 128]
    assert [c.name for c in cfg.classes] == ["land", "water"] and cfg.classes[1].color == "#1f78b4"
    assert cfg.output_activation == "softmax" and cfg.inputs.normalization.factor == 1e-4


def test_a_wrong_band_count_names_the_model_file() -> None:
    with pytest.raises(BundleError, match="3 bands given but the model takes 4 input channels") as err:
        make_config(ARCH, {"channels": ["r", "g", "b"]}, name="m", where="m/config.json", card={})
    assert err.value.path == "m/config.json"


@pytest.mark.skipif(
    importlib.util.find_spec("segmentation_models_pytorch") is not None, reason="smp is installed here"
)
def test_without_smp_an_smp_model_says_how_to_get_it(tmp_path: Path) -> None:
    folder = tmp_path / "unet"  # the two files smp's save_pretrained writes
    folder.mkdir()
    conf = {
        "_model_class": "Unet",
        "encoder_name": "resnet18",
        "encoder_weights": None,
        "in_channels": 4,
        "classes": 2,
    }
    (folder / "config.json").write_text(json.dumps(conf))
    save_file({"encoder.conv1.weight": torch.zeros(64, 4, 7, 7)}, str(folder / "model.safetensors"))
    bundle = tmp_path / "imported"  # a tilewise bundle naming an smp architecture
    bundle.mkdir()
    cfg = make_config(ARCH, {}, name="imported", where="", card={})
    (bundle / "model.yaml").write_text(config_yaml(cfg))
    save_file({"encoder.conv1.weight": torch.zeros(64, 4, 7, 7)}, str(bundle / "weights.safetensors"))
    cases = [
        (["bundle", "info", str(folder)], str(folder)),
        (["bundle", "import", "smp", str(folder), "--out", str(tmp_path / "b")], str(folder)),
        (["run", str(tmp_path), str(tmp_path / "o"), "-m", str(bundle)], str(bundle / "model.yaml")),
    ]
    for args, where in cases:
        res = CliRunner(env={"COLUMNS": "300"}).invoke(app, args)
        assert res.exit_code != 0 and len(res.output.strip().splitlines()) == 1, res.output
        line = " ".join(res.output.split())
        assert where in line and "segmentation-models-pytorch cannot be imported" in line
        assert "make venv-vision" in line
