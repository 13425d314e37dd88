"""model.yaml schema: strict fields, cross-field checks, errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from models.bundle import BundleConfig, default_color, validate_config
from pipeline.errors import BundleError


def _norm(**norm: Any) -> dict[str, Any]:
    return {"inputs": {"channels": ["a", "b"], "normalization": norm}}


def _config(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "n",
        "architecture": {"name": "unet", "in_channels": 2, "out_channels": 2},
        "spatial_dims": 2,
        "inputs": {"channels": ["a", "b"]},
        "patch_size": [8, 8],
        "classes": [{"name": "bg", "color": "#000000"}, {"name": "fg", "color": "#FF8000"}],
    }
    return base | over


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


def test_defaults_and_normalised_values() -> None:
    cfg = validate_config(_config(orientation="lps"))
    assert isinstance(cfg, BundleConfig) and validate_config(cfg) is cfg  # a config passes through
    assert cfg.orientation == "LPS" and cfg.overlap == 0.25 and cfg.output_activation == "softmax"
    assert cfg.inputs.normalization.kind == "none" and cfg.format_version == 1
    assert cfg.classes[1].color == "#ff8000" and cfg.classes[1].rgb == (255, 128, 0)


@pytest.mark.parametrize(
    ("over", "fragment"),
    [
        ({"orientation": "RAR"}, "orientation must be 3 axis codes"),
        ({"orientation": "RASX"}, "orientation must be 3 axis codes"),
        ({"target_spacing": [1.0]}, "target_spacing must be null or 2 positive numbers"),
        ({"target_spacing": [1.0, 0.0]}, "target_spacing"),
        ({"patch_size": [8, 0]}, "patch_size must be 2 positive integers"),
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"architecture": {"in_channels": 2, "out_channels": 2}}, "architecture.name is required"),
        ({"architecture": {"name": "unet", "in_channels": 2, "out_channels": 2, "spatial_dims": 3}}, "!="),
        ({"classes": [{"name": "x", "color": "#000000"}] * 2}, "class names must be unique"),
        ({"inputs": {"channels": ["a", "b"], "band_indexes": [1]}}, "band_indexes has 1 entries"),
        ({"inputs": {"channels": ["a", "b"], "band_indexes": [0, 1]}}, "1-based"),
        (_norm(kind="zscore"), "zscore needs"),
        (_norm(kind="zscore", mean=[0, 0], std=[1, 0]), "'std' values must be > 0"),
        (_norm(kind="zscore", mean=[0], std=[1]), "normalization.mean has 1 values for 2 channels"),
        (_norm(kind="percentile", lower=50, upper=5), "percentile needs"),
        (_norm(kind="ct_window", center=0, width=0), "'width' must be > 0"),
        (_norm(kind="minmax"), "kind"),
    ],
)
def test_invalid_configs_name_the_field(over: dict[str, Any], fragment: str) -> None:
    with pytest.raises(BundleError, match="invalid bundle") as info:
        validate_config(_config(**over), path="somewhere/model.yaml")
    assert fragment in str(info.value) and "somewhere/model.yaml" in str(info.value)


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(BundleError, match="expected a mapping at the top level, got list"):
        validate_config([1, 2])
