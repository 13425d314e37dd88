"""Weights against architecture: shapes from the meta device, mismatches named tensor by tensor."""

from __future__ import annotations

import pytest
import torch

from models.bundle import BundleConfig, validate_config
from models.bundle.shapes import check_shapes, meta_model, meta_shapes, tensor_shapes
from models.nets.registry import build_model
from pipeline.errors import BundleError


def _config(architecture: dict[str, object]) -> BundleConfig:
    return validate_config(
        {
            "name": "n",
            "architecture": architecture,
            "spatial_dims": 2,
            "inputs": {"channels": ["a"]},
            "patch_size": [8, 8],
            "classes": [{"name": "bg", "color": "#000000"}, {"name": "fg", "color": "#ffffff"}],
        }
    )


def test_meta_shapes_match_a_real_build_without_allocating() -> None:
    arch = {"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2, "features": [4, 8]}
    model = meta_model(_config(arch))
    assert model is not None and all(p.is_meta for p in model.parameters())
    assert meta_shapes(_config(arch)) == tensor_shapes(build_model(arch).state_dict())


def test_archives_have_no_meta_shapes() -> None:
    arch = {"name": "export", "path": "model.pt2", "in_channels": 1, "out_channels": 2}
    assert meta_model(_config(arch)) is None and meta_shapes(_config(arch)) is None


def test_unknown_architecture_is_a_bundle_error() -> None:
    with pytest.raises(BundleError, match="unknown architecture 'resnet'"):
        meta_shapes(_config({"name": "resnet", "in_channels": 1, "out_channels": 2}))


@pytest.mark.parametrize(
    ("found", "fragment"),
    [
        ({"a": (2, 3)}, "weights lack tensor 'b' (1 missing in all)"),
        ({"a": (2, 3), "b": (4,), "c": (1,), "d": (1,)}, "weights hold unexpected tensor 'c' (2 in all)"),
        ({"a": (3, 2), "b": (4,)}, "tensor 'a' has shape (3, 2) but the architecture expects (2, 3)"),
    ],
)
def test_check_shapes_names_the_first_offender(found: dict[str, tuple[int, ...]], fragment: str) -> None:
    expected = {"a": (2, 3), "b": (4,)}
    check_shapes(expected, {"b": (4,), "a": (2, 3)}, "w.safetensors")  # order does not matter
    with pytest.raises(BundleError) as info:
        check_shapes(expected, found, "w.safetensors")
    assert fragment in str(info.value) and "w.safetensors" in str(info.value)


def test_tensor_shapes() -> None:
    assert tensor_shapes({"w": torch.zeros(2, 3), "s": torch.tensor(1.0)}) == {"w": (2, 3), "s": ()}
