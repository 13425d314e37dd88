"""Registry: names to nets (ours and MONAI's) and clear errors; archives are left to their bundle."""

from __future__ import annotations

import pytest
import torch

from models.nets.registry import build_model, resolve
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
        ({"name": "export", "path": "model.pt2"}, "read with its bundle, not built"),
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
