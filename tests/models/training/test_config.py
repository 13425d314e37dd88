"""A run's bundle config: drafted from the settings or an init bundle, completed from the first scene."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.bundle import init_bundle
from models.training.config import TrainConfig, base_config, finish_config, spacing_of
from pipeline.errors import ConfigError
from pipeline.formats.scene import GeoMeta, VolumeMeta


def _cfg(tmp_path, **over) -> TrainConfig:
    return TrainConfig(**({"images": ["i.tif"], "labels": ["l.tif"], "out": str(tmp_path / "out")} | over))


def test_base_config_from_the_settings(tmp_path):
    cfg = _cfg(
        tmp_path, classes=["land", "water", "cloud"], colors=["#123456"], features=[4, 8], net_norm="instance"
    )
    base, weights = base_config(cfg)
    assert weights is None and base["name"] == "out"
    assert base["architecture"] == {"name": "unet", "out_channels": 3, "features": [4, 8], "norm": "instance"}
    assert [c["color"] for c in base["classes"]] == ["#123456", "#f28e2b", "#e15759"]  # defaults fill in
    with pytest.raises(ConfigError, match="class names"):
        base_config(_cfg(tmp_path))


def test_base_config_from_an_init_bundle(tmp_path):
    init = init_bundle(tmp_path / "init", "fcn", 2, 3, ["a", "b"], features=[4, 4, 8])
    base, weights = base_config(_cfg(tmp_path, bundle_init=str(init.path)))
    assert base["architecture"] == init.config.architecture and weights is not None
    expected = init.build().state_dict()
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)
    with pytest.raises(ConfigError, match="differ from the init bundle"):
        base_config(_cfg(tmp_path, bundle_init=str(init.path), classes=["x", "y"]))


def test_finish_config_fills_in_from_the_scene(tmp_path):
    base, _ = base_config(_cfg(tmp_path, classes=["a", "b"]))
    meta = GeoMeta(crs=None, transform=None, gsd=(10.0, 10.0))
    dataset = SimpleNamespace(descriptions=("blue", None, "nir"))
    scene = SimpleNamespace(shape=(3, 50, 60), meta=meta, dataset=dataset)
    config = finish_config(_cfg(tmp_path, patch_size=[32], name="named"), base, scene, 3)
    assert config["spatial_dims"] == 2 and config["architecture"]["in_channels"] == 3
    assert config["architecture"]["spatial_dims"] == 2 and config["patch_size"] == [32, 32]
    assert config["inputs"]["channels"] == ["blue", "ch2", "nir"]  # band descriptions, else ch<band>
    assert config["name"] == "named" and config["target_spacing"] == [10.0, 10.0]
    volume = SimpleNamespace(shape=(1, 20, 30, 40), meta=None)
    config = finish_config(_cfg(tmp_path), base, volume, 1)
    assert config["patch_size"] == [96, 96, 96] and config["target_spacing"] is None


def test_spacing_of():
    assert spacing_of(None) is None
    assert spacing_of(VolumeMeta(affine=np.eye(4), spacing=(1.0, 1.5, 2.0))) == [1.0, 1.5, 2.0]
    assert spacing_of(GeoMeta(crs=None, transform=None, gsd=(0.5, 0.25))) == [0.5, 0.25]
    assert spacing_of(GeoMeta(crs=None, transform=None)) is None  # no GSD: no target spacing
