"""Saving and initialising: round trips, reproducible seeds, readable YAML, nothing half-written;
and ``tilewise bundle init/info``, the commands over them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from flows.cli.bundle import bundle_app
from models.bundle import CONFIG_NAME, WEIGHTS_NAME, init_bundle, load_bundle, save_bundle
from models.bundle.save import config_yaml
from models.nets.registry import build_model
from pipeline.errors import BundleError, OutputError

from .conftest import CLASSES, run


def test_init_load_build_round_trip(bundle_dir: Path, tmp_path: Path) -> None:
    b = load_bundle(bundle_dir)
    assert b.config.name == "s2-test"
    assert b.class_names == CLASSES and b.num_classes == 3
    assert b.class_colors[0] == (0x4E, 0x79, 0xA7)
    assert b.config.patch_size == [32, 32] and b.config.inputs.normalization.kind == "zscore"
    net = b.build()
    assert not net.training
    x = torch.randn(2, 4, 45, 31)
    out = run(net, x)
    assert out.shape == (2, 3, 45, 31)
    # save what we loaded elsewhere; the copy computes the very same function
    copy = save_bundle(tmp_path / "copy", b.config, net.state_dict())
    assert torch.equal(run(copy.build(), x), out)
    assert copy.hash == b.hash  # same yaml bytes, same tensors


def test_init_is_reproducible_and_hash_tracks_content(tmp_path: Path) -> None:
    a = init_bundle(tmp_path / "a", "fcn", 2, 3, ["x", "y"], features=[4, 4, 8], name="same")
    b = init_bundle(tmp_path / "b", "fcn", 2, 3, ["x", "y"], features=[4, 4, 8], name="same")
    assert a.hash == b.hash == load_bundle(tmp_path / "a").hash
    expected = hashlib.sha256(
        (tmp_path / "a" / CONFIG_NAME).read_bytes() + (tmp_path / "a" / WEIGHTS_NAME).read_bytes()
    ).hexdigest()
    assert a.hash == expected
    state = load_file(str(tmp_path / "b" / WEIGHTS_NAME))
    state["final_up.weight"] += 1.0
    save_file(state, str(tmp_path / "b" / WEIGHTS_NAME))
    assert load_bundle(tmp_path / "b").hash != a.hash
    torch.manual_seed(123)  # init_bundle must not depend on (or disturb) the global RNG
    before = torch.rand(1)
    torch.manual_seed(123)
    init_bundle(tmp_path / "c", "unet", 2, 1, ["x"], features=[2], name="same")
    assert torch.equal(torch.rand(1), before)


def test_3d_defaults(tmp_path: Path) -> None:
    b = init_bundle(tmp_path / "v", "unet", 3, 1, ["bg", "organ"], features=[2, 4])
    assert b.config.patch_size == [96, 96, 96] and b.config.spatial_dims == 3
    assert run(b.build(), torch.randn(1, 1, 19, 23, 29)).shape == (1, 2, 19, 23, 29)
    assert init_bundle(tmp_path / "w", "fcn", 2, 1, ["a"]).config.patch_size == [256, 256]


def test_save_refuses_mismatched_state_and_writes_nothing(bundle_dir: Path, tmp_path: Path) -> None:
    b = load_bundle(bundle_dir)
    state = b.build().state_dict()
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(BundleError, match=r"unexpected tensor 'extra\.weight'"):
        save_bundle(tmp_path / "bad", b.config, state)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(OutputError, match="exists"):
        save_bundle(bundle_dir, b.config, b.build().state_dict())


def test_yaml_is_readable_and_holds_only_what_applies(bundle_dir: Path) -> None:
    config = load_bundle(bundle_dir).config
    text = (bundle_dir / CONFIG_NAME).read_text()
    assert text == config_yaml(config)
    assert "features: [4, 8]" in text and "patch_size: [32, 32]" in text  # short lists inline
    assert text.index("name:") < text.index("architecture:") < text.index("classes:")  # schema order
    norm = yaml.safe_load(text)["inputs"]["normalization"]
    assert norm == {"kind": "zscore", "mean": [0.0] * 4, "std": [1.0] * 4}  # no ct_window/percentile keys
    assert "band_indexes" not in yaml.safe_load(text)["inputs"]
    data = config.model_dump(mode="json")
    data["inputs"]["band_indexes"] = [4, 3, 2, 1]
    data["inputs"]["normalization"] = {"kind": "ct_window", "center": 40, "width": 400}
    again = yaml.safe_load(config_yaml(data))
    assert again["inputs"]["band_indexes"] == [4, 3, 2, 1]
    assert again["inputs"]["normalization"] == {"kind": "ct_window", "center": 40.0, "width": 400.0}


def test_init_refuses_bad_arguments(tmp_path: Path) -> None:
    for kwargs, fragment in (
        ({"arch": "vgg"}, "arch must be"),
        ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
        ({"in_channels": 0}, "in_channels >= 1"),
        ({"classes": []}, "at least one class"),
    ):
        with pytest.raises(BundleError, match=fragment):
            init_bundle(tmp_path / "x", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


def test_cli_init_info_and_overwrite(tmp_path: Path) -> None:
    runner = CliRunner(env={"COLUMNS": "200"})
    out = tmp_path / "cli"
    args = ["init", "--arch", "fcn", "--spatial-dims", "2", "--in-channels", "4", "--classes", "land,water"]
    args += ["--out", str(out), "--patch-size", "64", "--features", "4,4,8"]
    res = runner.invoke(bundle_app, args)
    assert res.exit_code == 0, res.output
    b = load_bundle(out)
    assert b.config.architecture["features"] == [4, 4, 8] and b.config.patch_size == [64, 64]
    assert b.class_names == ["land", "water"]
    net = build_model(b.config.architecture)
    assert sum(p.numel() for p in net.parameters()) == b.param_count()

    res = runner.invoke(bundle_app, ["info", str(out)])
    assert res.exit_code == 0, res.output
    for text in ("fcn", "land", "water", "#4e79a7", b.hash, f"{b.param_count():,}", "zscore", "64 x 64"):
        assert text in res.output, text

    before = b.hash
    res = runner.invoke(bundle_app, [*args[:-4], "--features", "2,2,2"])
    assert res.exit_code != 0 and "exists" in res.output
    assert load_bundle(out).hash == before
    res = runner.invoke(bundle_app, [*args[:-4], "--features", "2,2,2", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert load_bundle(out).config.architecture["features"] == [2, 2, 2]


def test_cli_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(bundle_app, ["info", str(tmp_path / "missing")])
    assert res.exit_code == BundleError.exit_code and "not found" in res.output
    base = ["init", "--classes", "a", "--out", str(tmp_path / "x")]
    assert runner.invoke(bundle_app, [*base, "--spatial-dims", "4"]).exit_code == 2
    assert runner.invoke(bundle_app, [*base, "--features", "4,x"]).exit_code == 2
    assert runner.invoke(bundle_app, [*base, "--arch", "vgg"]).exit_code == 2
    assert not (tmp_path / "x").exists()
