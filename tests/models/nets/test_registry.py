"""Registry: names to nets (ours and MONAI's), clear errors, and archive formats that never unpickle."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.nets.registry import build_model, load_scripted, resolve
from pipeline.errors import BundleError

CONFIGS = {
    "unet": {"name": "unet", "spatial_dims": 2, "in_channels": 2, "out_channels": 3, "features": [4, 8]},
    "fcn": {"name": "fcn", "spatial_dims": 2, "in_channels": 2, "out_channels": 3, "features": [4, 4, 8]},
    "monai.UNet": {
        "name": "monai.UNet",
        "spatial_dims": 2,
        "in_channels": 2,
        "out_channels": 3,
        "channels": [4, 8, 16],
        "strides": [2, 2],
    },
    "monai.BasicUNet": {
        "name": "monai.BasicUNet",
        "spatial_dims": 2,
        "in_channels": 2,
        "out_channels": 3,
        "features": [4, 4, 8, 8, 16, 4],
    },
    "monai.SegResNet": {
        "name": "monai.SegResNet",
        "spatial_dims": 2,
        "in_channels": 2,
        "out_channels": 3,
        "init_filters": 8,
    },
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_build_and_run(name: str) -> None:
    net = build_model(CONFIGS[name]).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 2, 32, 32))
    assert out.shape == (1, 3, 32, 32)


def test_monai_3d() -> None:
    cfg = {"name": "monai.BasicUNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2}
    cfg["features"] = [2, 2, 4, 4, 8, 2]
    with torch.no_grad():
        assert build_model(cfg).eval()(torch.randn(1, 1, 32, 32, 32)).shape == (1, 2, 32, 32, 32)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"name": "resnet9000"}, "unknown architecture 'resnet9000'"),
        ({"name": "monai.NoSuchNet"}, "NoSuchNet"),
        ({"name": "monai.get_efficientnet_image_size"}, "no network class"),  # a function, not a Module
        ({"name": "monai._private"}, "no network class"),
        ({"name": "monai."}, "unknown architecture"),
        ({"spatial_dims": 2}, "'name'"),
        ({"name": "unet", "widths": [4, 8]}, "widths"),
        ({"name": "unet", "spatial_dims": 4}, "spatial_dims must be 2 or 3"),
        ({"name": "monai.UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2}, "monai.UNet"),
        ({"name": "torchscript"}, "path"),
    ],
)
def test_bad_configs_raise_bundle_error(config: dict[str, object], fragment: str) -> None:
    with pytest.raises(BundleError, match=None) as info:
        build_model(config)
    assert fragment in str(info.value)


def test_bad_kwarg_message_lists_accepted_arguments() -> None:
    with pytest.raises(BundleError) as info:
        build_model({"name": "fcn", "depth": 3})
    assert "variant" in str(info.value) and "depth" in str(info.value)


def test_resolve_returns_monai_classes() -> None:
    import monai.networks.nets as nets

    assert resolve("monai.SegResNet") is nets.SegResNet


def _tiny_unet() -> torch.nn.Module:
    torch.manual_seed(1)
    return build_model(CONFIGS["unet"]).eval()


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_torchscript_round_trip(tmp_path: Path) -> None:
    net = _tiny_unet()
    x = torch.randn(1, 2, 32, 32)
    path = tmp_path / "model.ts"
    torch.jit.trace(net, x).save(str(path))
    loaded = load_scripted(path)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-5)
    via_registry = build_model(
        {"name": "torchscript", "path": "model.ts", "in_channels": 2}, base_dir=tmp_path
    )
    with torch.no_grad():
        assert torch.allclose(via_registry(x), net(x), atol=1e-5)


def test_export_round_trip(tmp_path: Path) -> None:
    net = _tiny_unet()
    x = torch.randn(1, 2, 37, 29)  # odd size: padding is captured in the graph
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(net, (x,)), str(path))
    loaded = load_scripted(path)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-5)
    assert isinstance(build_model({"name": "export", "path": str(path)}), torch.nn.Module)


def test_pickle_checkpoint_is_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(_tiny_unet().state_dict(), path)
    with pytest.raises(BundleError, match="TorchScript"):
        load_scripted(path)
    with pytest.raises(BundleError, match="not found"):
        load_scripted(tmp_path / "missing.ts")
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match=r"torch\.export"):
        load_scripted(tmp_path / "junk.pt2")
