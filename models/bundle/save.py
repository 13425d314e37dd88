"""Write a bundle: validated config as readable YAML plus safetensors weights, appearing only when complete.

Saving checks what loading checks (schema, tensor shapes against the architecture), so nothing can
write a bundle that would then refuse to load; the folder is written aside and renamed into place, so
a crash never leaves half a bundle at the final path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from safetensors.torch import save_file

from models.bundle.load import Bundle, load_bundle
from models.bundle.schema import CONFIG_NAME, WEIGHTS_NAME, BundleConfig, default_color, validate_config
from models.bundle.shapes import check_shapes, meta_shapes, tensor_shapes
from models.nets.registry import build_model
from pipeline.atomic import atomic_path
from pipeline.errors import BundleError

_NORM_KEYS = {
    "zscore": ("mean", "std"),
    "percentile": ("lower", "upper"),
    "ct_window": ("center", "width"),
    "scale": ("factor", "offset"),
    "clip_zscore": ("mean", "std", "clip_lower", "clip_upper"),
    "scene_zscore": ("nonzero", "channel_wise"),
    "scene_rescale": ("native_stats",),
    "per_channel": (),
}
_OPTIONAL = {
    "grid": "monai",
    "activation_stage": "window",
    "blend": None,
    "sigma_scale": None,
    "batch_size": None,
    "postprocess": None,
    "resampling": None,
    "accumulate": "float32",
}


class _Dumper(yaml.SafeDumper):
    """Safe dumper writing short lists of scalars inline (``[16, 32, 64]``), so model.yaml reads well."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = len(data) <= 16 and all(isinstance(v, (int, float, str)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def _yaml_data(cfg: BundleConfig) -> dict[str, Any]:
    """The config as plain data, without fields that do not apply (e.g. ct_window keys for zscore)."""
    data = cfg.model_dump(mode="json")
    data["inputs"]["normalization"] = _norm_data(data["inputs"]["normalization"])
    for key, default in _OPTIONAL.items():  # fields older bundles never had stay out of their YAML
        if data.get(key) == default:
            del data[key]
    if data["inputs"]["band_indexes"] is None:
        del data["inputs"]["band_indexes"]
    if not data["inputs"]["crop_nonzero"]:
        del data["inputs"]["crop_nonzero"]
    return data


def _norm_data(norm: dict[str, Any]) -> dict[str, Any]:
    out = {"kind": norm["kind"], **{k: norm[k] for k in _NORM_KEYS.get(norm["kind"], ())}}
    if norm["kind"] == "scene_zscore":
        for key, default in (("nonzero_mask", "channel"), ("native_stats", False)):
            if norm[key] != default:
                out[key] = norm[key]
    if norm["kind"] == "ct_window" and (norm["out_min"], norm["out_max"]) != (0.0, 1.0):
        out.update(out_min=norm["out_min"], out_max=norm["out_max"])
    if norm["kind"] == "per_channel":
        out["per_channel"] = [_norm_data(n) for n in norm["per_channel"]]
    return out


def config_yaml(config: BundleConfig | Mapping[str, Any]) -> str:
    """The text of model.yaml for ``config``: fields in schema order, short lists inline."""
    return yaml.dump(_yaml_data(validate_config(config)), Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def save_bundle(
    path: str | Path,
    config: BundleConfig | Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    overwrite: bool = False,
) -> Bundle:
    """Write model.yaml + weights.safetensors into ``path``, which appears only when complete."""
    cfg = validate_config(config)
    state: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for k, v in state_dict.items():  # safetensors refuses shared storage (tied weights, nnU-Net's decoder
        t = v.detach().to("cpu").contiguous()  # holding its encoder): a tensor seen before is copied
        ptr = t.untyped_storage().data_ptr()
        state[k] = t.clone() if ptr in storages else t
        storages.add(ptr)
    expected = meta_shapes(cfg)
    if expected is not None:
        check_shapes(expected, tensor_shapes(state), str(path))
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.mkdir(parents=True)
        (tmp / CONFIG_NAME).write_text(config_yaml(cfg), encoding="utf-8")
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})  # one key: stable bytes
    return load_bundle(path)


def init_bundle(
    out: str | Path,
    arch: Literal["unet", "fcn"] = "unet",
    spatial_dims: int = 2,
    in_channels: int = 3,
    classes: list[str] | tuple[str, ...] = ("background", "foreground"),
    patch_size: int | list[int] | None = None,
    features: list[int] | None = None,
    overwrite: bool = False,
    *,
    name: str | None = None,
    seed: int = 0,
) -> Bundle:
    """A randomly initialised (seeded, so reproducible) bundle: for smoke tests and as a training start."""
    if arch not in ("unet", "fcn"):
        raise BundleError(f"arch must be 'unet' or 'fcn', got {arch!r}")
    if spatial_dims not in (2, 3):
        raise BundleError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if in_channels < 1 or not classes:
        raise BundleError("need in_channels >= 1 and at least one class")
    if patch_size is None:
        patch_size = 256 if spatial_dims == 2 else 96
    patch = [int(patch_size)] * spatial_dims if isinstance(patch_size, int) else [int(p) for p in patch_size]
    architecture = dict(
        name=arch, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=len(classes)
    )
    if features is not None:
        architecture["features"] = [int(f) for f in features]
    norm = {"kind": "zscore", "mean": [0.0] * in_channels, "std": [1.0] * in_channels}
    description = f"Randomly initialised {arch} (seed {seed}); untrained, its predictions are noise."
    config = validate_config(
        dict(
            name=name or Path(out).resolve().name or "bundle",
            architecture=architecture,
            spatial_dims=spatial_dims,
            inputs={"channels": [f"ch{i + 1}" for i in range(in_channels)], "normalization": norm},
            patch_size=patch,
            classes=[{"name": c, "color": default_color(i)} for i, c in enumerate(classes)],
            card={"description": description, "license": "Apache-2.0", "metrics": {}},
        )
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config.architecture)
    return save_bundle(out, config, model.state_dict(), overwrite=overwrite)
