"""What an smp or TorchGeo model does not say about itself: bands, scaling, classes, window, GSD.

The same keys come from a small YAML file or from command-line options (options win):

```yaml
channels: [B02, B03, B04, B08]       # one name per input channel (default ch1..chN)
band_indexes: [2, 3, 4, 8]           # 1-based bands of the scene to read (default: all, in order)
normalization: {kind: zscore, mean: [...], std: [...]}   # as in model.yaml (default: none)
classes: [background, water]         # or [{name: water, color: "#1f78b4"}, ...] (default class_0..)
patch_size: 256                      # window edge in pixels, a multiple of the encoder's stride
gsd: 10                              # metres per pixel the model was trained at (default: as is)
overlap: 0.25
activation: softmax                  # or sigmoid / none (default: softmax, none if the net has one)
```
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from models.bundle.schema import BundleConfig, default_color, validate_config
from pipeline.errors import BundleError

KEYS = (
    "name",
    "channels",
    "band_indexes",
    "normalization",
    "classes",
    "patch_size",
    "gsd",
    "overlap",
    "activation",
)
DEFAULT_PATCH = 256


def read_spec(path: Path) -> dict[str, Any]:
    """A spec YAML file as a dict of known keys (BundleError naming the file otherwise)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BundleError(f"cannot read: {exc.strerror or exc}", path=str(path)) from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BundleError(f"not valid YAML: {str(exc).splitlines()[0]}", path=str(path)) from exc
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise BundleError("expected a mapping of channels, normalization, classes, ...", path=str(path))
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise BundleError(f"unknown keys {', '.join(unknown)}; known: {', '.join(KEYS)}", path=str(path))
    return dict(data)


def _classes(given: Any, n: int, where: str) -> list[dict[str, str]]:
    if given is None:
        return [{"name": f"class_{i}", "color": default_color(i)} for i in range(n)]
    if not isinstance(given, list) or len(given) != n:
        count = len(given) if isinstance(given, list) else "no list of"
        raise BundleError(f"{count} classes given but the model has {n} output channels", path=where)
    return [
        {"name": str(c), "color": default_color(i)}
        if not isinstance(c, Mapping)
        else {"name": str(c.get("name")), "color": c.get("color") or default_color(i)}
        for i, c in enumerate(given)
    ]


def make_config(
    architecture: Mapping[str, Any],
    spec: Mapping[str, Any],
    *,
    name: str,
    where: str,
    card: Mapping[str, Any],
    net_activation: bool = False,
) -> BundleConfig:
    """A validated BundleConfig for an smp network described by ``spec``; ``where`` names the model file
    in errors. ``net_activation``: the net applies its own activation, so tilewise adds none."""
    n_in, n_out = int(architecture["in_channels"]), int(architecture["out_channels"])
    channels = spec.get("channels") or [f"ch{i + 1}" for i in range(n_in)]
    if not isinstance(channels, list) or len(channels) != n_in:
        count = len(channels) if isinstance(channels, list) else "no list of"
        raise BundleError(f"{count} bands given but the model takes {n_in} input channels", path=where)
    patch = spec.get("patch_size") or DEFAULT_PATCH
    patch = [int(patch)] * 2 if isinstance(patch, (int, float)) else [int(p) for p in patch]
    gsd = spec.get("gsd")
    inputs: dict[str, Any] = {"channels": [str(c) for c in channels]}
    if spec.get("band_indexes") is not None:
        inputs["band_indexes"] = list(spec["band_indexes"])
    if spec.get("normalization") is not None:
        inputs["normalization"] = dict(spec["normalization"])
    activation = spec.get("activation") or ("none" if net_activation else "softmax")
    data = {
        "name": str(spec.get("name") or name),
        "architecture": dict(architecture),
        "spatial_dims": 2,
        "inputs": inputs,
        "target_spacing": None if gsd is None else [float(gsd)] * 2,
        "patch_size": patch,
        "overlap": float(spec.get("overlap", 0.25)),
        "output_activation": activation,
        "classes": _classes(spec.get("classes"), n_out, where),
        "card": dict(card),
    }
    return validate_config(data, path=where)
