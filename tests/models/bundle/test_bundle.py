"""Bundles: round trips, stable hashes, errors that name the file and field, no unpickling by default."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from flows.cli.bundle import bundle_app
from models.bundle import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    default_color,
    init_bundle,
    load_bundle,
    save_bundle,
    validate_config,
)
from models.nets.registry import build_model
from pipeline.errors import BundleError, OutputError

CLASSES = ["land", "water", "cloud"]


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    init_bundle(tmp_path / "b", "unet", 2, 4, CLASSES, patch_size=32, features=[4, 8], name="s2-test")
    return tmp_path / "b"


def _yaml(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / CONFIG_NAME).read_text())


def _write_yaml(folder: Path, data: dict[str, Any]) -> None:
    (folder / CONFIG_NAME).write_text(yaml.safe_dump(data))


def _run(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x)


def test_init_load_build_round_trip(bundle_dir: Path, tmp_path: Path) -> None:
    b = load_bundle(bundle_dir)
    assert b.config.name == "s2-test"
    assert b.class_names == CLASSES and b.num_classes == 3
    assert b.class_colors[0] == (0x4E, 0x79, 0xA7)
    assert b.config.patch_size == [32, 32] and b.config.inputs.normalization.kind == "zscore"
    net = b.build()
    assert not net.training
    x = torch.randn(2, 4, 45, 31)
    out = _run(net, x)
    assert out.shape == (2, 3, 45, 31)
    # save what we loaded elsewhere; the copy computes the very same function
    copy = save_bundle(tmp_path / "copy", b.config, net.state_dict())
    assert torch.equal(_run(copy.build(), x), out)
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
    assert _run(b.build(), torch.randn(1, 1, 19, 23, 29)).shape == (1, 2, 19, 23, 29)
    assert init_bundle(tmp_path / "w", "fcn", 2, 1, ["a"]).config.patch_size == [256, 256]


def test_palette_is_valid_and_distinct() -> None:
    colors = [default_color(i) for i in range(40)]
    assert len(set(colors)) == 40
    validate_config(
        {
            "name": "n",
            "architecture": {"name": "unet", "in_channels": 1, "out_channels": 40},
            "spatial_dims": 2,
            "inputs": {"channels": ["a"]},
            "patch_size": [8, 8],
            "classes": [{"name": f"c{i}", "color": c} for i, c in enumerate(colors)],
        }
    )


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda d: d.pop("classes"), "classes: Field required"),
        (lambda d: d.pop("patch_size"), "patch_size"),
        (lambda d: d["architecture"].pop("out_channels"), "architecture.out_channels"),
        (lambda d: d["classes"].pop(), "classes lists 2"),
        (lambda d: d["architecture"].update(in_channels=5), "in_channels is 5 but inputs.channels lists 4"),
        (lambda d: d["classes"][0].update(color="red"), "classes.0.color"),
        (lambda d: d.update(patch_size=[32, 32, 32]), "patch_size must be 2"),
        (lambda d: d.update(overlap=1.0), "overlap"),
        (lambda d: d["inputs"]["normalization"]["mean"].pop(), "normalization.mean has 3 values"),
        (lambda d: d["inputs"]["normalization"].update(kind="ct_window"), "ct_window needs"),
        (lambda d: d.update(colour_map="x"), "colour_map"),
        (lambda d: d.update(format_version=2), "format_version"),
        (lambda d: d["architecture"].update(name="resnet"), "unknown architecture 'resnet'"),
        (lambda d: d["architecture"].update(features=[4, 8, 16]), "lack tensor 'downs.2.0.weight'"),
        (lambda d: d["architecture"].update(features=[4, 6]), "the architecture expects"),
    ],
)
def test_invalid_yaml_names_file_and_field(bundle_dir: Path, edit: Any, fragment: str) -> None:
    data = _yaml(bundle_dir)
    edit(data)
    _write_yaml(bundle_dir, data)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_dir)
    assert fragment in str(info.value)
    assert str(bundle_dir) in str(info.value)


def test_missing_and_unreadable(tmp_path: Path, bundle_dir: Path) -> None:
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"no model\.yaml"):
        load_bundle(tmp_path / "empty")
    (bundle_dir / CONFIG_NAME).write_text("name: [unclosed\n")
    with pytest.raises(BundleError, match="not valid YAML"):
        load_bundle(bundle_dir / CONFIG_NAME)
    (bundle_dir / CONFIG_NAME).write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(BundleError, match="YAML"):  # safe loader refuses python tags
        load_bundle(bundle_dir)


def test_wrong_tensor_shape_names_the_tensor(bundle_dir: Path) -> None:
    state = load_file(str(bundle_dir / WEIGHTS_NAME))
    state["final_conv.weight"] = torch.zeros(5, 4, 1, 1)
    save_file(state, str(bundle_dir / WEIGHTS_NAME))
    with pytest.raises(BundleError, match=r"'final_conv.weight' has shape \(5, 4, 1, 1\)") as info:
        load_bundle(bundle_dir)
    assert WEIGHTS_NAME in str(info.value)
    del state["final_conv.weight"]
    save_file(state, str(bundle_dir / WEIGHTS_NAME))
    with pytest.raises(BundleError, match=r"lack tensor 'final_conv\.weight'"):
        load_bundle(bundle_dir)


def test_save_refuses_mismatched_state_and_writes_nothing(bundle_dir: Path, tmp_path: Path) -> None:
    b = load_bundle(bundle_dir)
    state = b.build().state_dict()
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(BundleError, match=r"unexpected tensor 'extra\.weight'"):
        save_bundle(tmp_path / "bad", b.config, state)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(OutputError, match="exists"):
        save_bundle(bundle_dir, b.config, b.build().state_dict())


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_pickle_refused_unless_trusted(bundle_dir: Path, tmp_path: Path) -> None:
    b = load_bundle(bundle_dir)
    net = b.build()
    x = torch.randn(1, 4, 16, 16)
    (bundle_dir / WEIGHTS_NAME).unlink()
    torch.save(net.state_dict(), bundle_dir / "model.pth")
    with pytest.raises(BundleError, match="pickle") as info:
        load_bundle(bundle_dir)
    assert "trust_pickle=True" in str(info.value) and "model.pth" in str(info.value)
    trusted = load_bundle(bundle_dir, trust_pickle=True)
    assert torch.equal(_run(trusted.build(), x), _run(net, x))
    # even when trusted, weights_only=True refuses a payload that would run code
    marker = tmp_path / "pwned"
    (bundle_dir / "model.pth").write_bytes(pickle.dumps({"w": _Evil(marker)}))
    with pytest.raises(BundleError, match="weights_only"):
        load_bundle(bundle_dir, trust_pickle=True).build()
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_export_archive_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    src = load_bundle(bundle_dir)
    net = src.build()
    x = torch.randn(1, 4, 32, 32)
    folder = tmp_path / "exported"
    folder.mkdir()
    torch.export.save(torch.export.export(net, (x,)), str(folder / "model.pt2"))
    data = src.config.model_dump(mode="json")
    data["architecture"] = {"name": "export", "path": "model.pt2", "in_channels": 4, "out_channels": 3}
    _write_yaml(folder, data)
    b = load_bundle(folder)
    assert b.weights is None and b.archive == folder / "model.pt2"
    assert torch.allclose(_run(b.build(), x), _run(net, x), atol=1e-5)
    assert b.param_count() == sum(p.numel() for p in net.parameters())


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
