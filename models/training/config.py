"""What one training run is asked for, and the bundle config it starts from.

The run's settings (:class:`TrainConfig`) are filled in by the CLI and the scripts. The bundle config
is drafted from them, or from an init bundle, before any data is read, and completed from the first
scene (dimensions, channel names, spacing), so the saved bundle describes the data it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.bundle import Bundle, default_color, load_bundle
from pipeline.errors import ConfigError
from pipeline.formats.scene import GeoMeta, VolumeMeta
from pipeline.job.evaluate import IGNORE


@dataclass
class TrainConfig:
    """Everything one training run needs; the CLI and the scripts fill it in."""

    images: list[str]
    labels: list[str]
    out: str
    classes: list[str] | None = None  # required unless bundle_init gives them
    colors: list[str] | None = None
    bundle_init: str | None = None  # start from this bundle's architecture and weights
    arch: str = "unet"
    features: list[int] | None = None
    net_norm: str = "batch"
    channels: list[str] | None = None  # input names, e.g. B02,B03,B04,B08
    band_indexes: list[int] | None = None  # 1-based bands to feed the net
    normalization: str = "zscore"  # zscore (statistics from the data) | percentile | none
    label_map: str | dict[int, int] | None = None
    ignore_value: int | None = IGNORE
    val_region: str | None = None
    patch_size: list[int] | None = None
    overlap: float = 0.25
    epochs: int = 10
    steps_per_epoch: int = 50
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    flip_axes: list[int] | None = None  # None: every spatial axis
    rot90: bool | None = None  # None: in 2-D only
    intensity: float = 0.1
    intensity_per_channel: bool = False
    random_fraction: float = 0.1
    ema_decay: float = 0.0  # validate and save an exponential moving average of the weights (0: off)
    time_limit_s: float | None = None
    name: str | None = None
    description: str | None = None
    data_sources: list[str] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    command: str | None = None
    overwrite: bool = False
    progress: bool = True


@dataclass
class TrainResult:
    bundle: Bundle
    losses: list[float]
    validation: list[dict[str, Any]]
    best: dict[str, Any]
    seconds: float


def base_config(cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """The bundle config to fill in, and starting weights (from ``bundle_init``), if any."""
    if cfg.bundle_init:
        init = load_bundle(cfg.bundle_init)
        base = init.config.model_dump(mode="json")
        weights = init.build().state_dict()
        if cfg.classes and cfg.classes != init.class_names:
            raise ConfigError(f"--classes {cfg.classes} differ from the init bundle's {init.class_names}")
        return base, weights
    if not cfg.classes:
        raise ConfigError("give the class names (or --bundle-init)")
    arch: dict[str, Any] = {"name": cfg.arch, "out_channels": len(cfg.classes)}
    if cfg.features:
        arch["features"] = [int(f) for f in cfg.features]
    if cfg.net_norm != "batch":
        arch["norm"] = cfg.net_norm
    base = {
        "name": cfg.name or Path(cfg.out).resolve().name,
        "architecture": arch,
        "inputs": {"channels": cfg.channels or [], "band_indexes": cfg.band_indexes},
        "orientation": "RAS",
        "target_spacing": None,
        "overlap": cfg.overlap,
        "classes": [
            {"name": c, "color": (cfg.colors or [])[i] if i < len(cfg.colors or []) else default_color(i)}
            for i, c in enumerate(cfg.classes)
        ],
    }
    return base, None


def finish_config(cfg: TrainConfig, base: dict[str, Any], scene: Any, in_channels: int) -> dict[str, Any]:
    dims = len(scene.shape) - 1
    config = dict(base)
    arch = dict(config["architecture"])
    arch.setdefault("spatial_dims", dims)
    arch.setdefault("in_channels", in_channels)
    config["architecture"] = arch
    config["spatial_dims"] = dims
    names = config["inputs"].get("channels") or []
    if not names:
        # GeoTIFF band descriptions when the file has them, else ch<band>
        desc = list(getattr(getattr(scene, "dataset", None), "descriptions", None) or ())
        bands = config["inputs"].get("band_indexes") or list(range(1, in_channels + 1))
        names = [desc[b - 1] if b - 1 < len(desc) and desc[b - 1] else f"ch{b}" for b in bands]
    config["inputs"] = {**config["inputs"], "channels": list(names)}
    patch = cfg.patch_size or config.get("patch_size") or ([256] * 2 if dims == 2 else [96] * 3)
    config["patch_size"] = [int(patch[0])] * dims if len(patch) == 1 else [int(p) for p in patch]
    if not config.get("target_spacing"):
        config["target_spacing"] = spacing_of(scene.meta)
    if cfg.name:
        config["name"] = cfg.name
    return config


def spacing_of(meta: Any) -> list[float] | None:
    """Pixel size (GSD, y x) or voxel size (mm) of a scene, for the bundle's target_spacing."""
    if isinstance(meta, GeoMeta) and meta.gsd:
        return [float(v) for v in meta.gsd]
    if isinstance(meta, VolumeMeta):
        return [float(v) for v in meta.spacing]
    return None
