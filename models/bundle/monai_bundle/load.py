"""A MONAI bundle folder as a :class:`Bundle`: metadata, network, transforms and weights, checked up front.

Weights are ``models/model.pt`` (a state dict, read with ``torch.load(weights_only=True)``, which
refuses anything but tensors and plain containers; ``trust_pickle`` allows a full unpickle),
``models/model.safetensors``, or a ``models/model.ts`` TorchScript archive. The hash covers the
metadata, the inference config and the weights, so results name exactly what ran.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.bundle.load import Bundle, _Contents
from models.bundle.monai_bundle import transforms
from models.bundle.monai_bundle.config import MonaiConfig
from models.bundle.schema import default_color, validate_config
from models.bundle.shapes import check_shapes, meta_shapes, tensor_shapes
from models.nets.monai_config import stored_as_data
from models.nets.registry import MONAI_CONFIG, set_eval
from pipeline.errors import BundleError

WEIGHT_NAMES = ("models/model.pt", "models/model.safetensors", "models/model.ts")


class MonaiBundle(Bundle):
    """A Bundle whose net, when the user trusts the bundle's code, MONAI builds with expressions on."""

    trust_code: bool = False
    kind = "monai"

    @property
    def needs_its_code(self) -> bool:
        """A trusted net that cannot be saved as data (a class from the bundle's ``scripts/``, an
        expression): only the bundle folder itself, opened with the user's trust, rebuilds it."""
        return (
            self.trust_code
            and self.archive is None
            and not stored_as_data(self.config.architecture.get("network_def"))
        )

    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        if not self.trust_code or self.archive is not None:
            return super().build(device)
        model = MonaiConfig(self.path, trust_code=True).network()
        state = self._contents.state
        assert state is not None and self.weights is not None
        check_shapes(tensor_shapes(model.state_dict()), tensor_shapes(state), str(self.weights))
        model.load_state_dict(state, strict=True)
        return set_eval(model.to(device))


def _state_dict(data: bytes, path: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load

        try:
            return load(data)
        except Exception as exc:
            raise BundleError(f"unreadable safetensors file: {exc}", path=str(path)) from exc
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            reason = "the checkpoint needs a full unpickle, which can run arbitrary code; pass --trust-pickle"
        raise BundleError(f"cannot load weights: {reason}", path=str(path)) from exc
    for key in ("state_dict", "model", "model_state_dict", "network"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleError("checkpoint is not a state dict of tensors", path=str(path))
    return state


def _classes(meta: Mapping[str, Any], out_channels: int, where: str) -> list[dict[str, str]]:
    output = _io(meta, "outputs")
    names = output.get("channel_def") or {}
    classes = [str(names.get(str(i), names.get(i, f"class_{i}"))) for i in range(out_channels)]
    if len(set(classes)) != len(classes):
        raise BundleError(f"class names in channel_def are not unique: {classes}", path=where)
    return [{"name": n, "color": default_color(i)} for i, n in enumerate(classes)]


def _io(meta: Mapping[str, Any], side: str) -> Mapping[str, Any]:
    """The first entry of network_data_format.inputs / outputs (``image`` / ``pred`` in the zoo)."""
    entries = (meta.get("network_data_format") or {}).get(side) or {}
    first = next(iter(entries.values()), {}) if isinstance(entries, Mapping) else {}
    return first if isinstance(first, Mapping) else {}


def _channels(meta: Mapping[str, Any], side: str, net: Mapping[str, Any] | None, key: str, where: str) -> int:
    declared = _io(meta, side).get("num_channels")
    built = net.get(key) if net else None
    if isinstance(declared, int) and isinstance(built, int) and declared != built:
        raise BundleError(
            f"metadata says {declared} {side[:-1]} channels but network_def has {key} {built}", path=where
        )
    value = built if isinstance(built, int) else declared
    if not isinstance(value, int) or value < 1:
        raise BundleError(f"cannot tell the number of {side[:-1]} channels (network_data_format)", path=where)
    return value


def load_monai_bundle(folder: Path, *, trust_pickle: bool = False, trust_code: bool = False) -> MonaiBundle:
    """Read, map and check a MONAI bundle folder; every problem is one BundleError naming its file."""
    cfg = MonaiConfig(folder, trust_code=trust_code)
    try:
        return _load(cfg, folder, trust_pickle, trust_code)
    except BundleError as exc:
        if exc.path is not None:
            raise
        raise BundleError(str(exc), path=str(cfg.path)) from exc  # a mapping problem: the config's


def _load(cfg: MonaiConfig, folder: Path, trust_pickle: bool, trust_code: bool) -> MonaiBundle:
    weights = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
    if weights is None:
        raise BundleError(f"no weights: expected one of {', '.join(WEIGHT_NAMES)}", path=str(folder))
    archive = weights.suffix == ".ts"
    net_def = cfg.get("network_def") if cfg.has("network_def") and not archive else None
    if not archive and net_def is None:
        raise BundleError("the config has no network_def for models/model.pt", path=str(cfg.path))
    meta_path = str(cfg.metadata_path)
    n_in = _channels(cfg.metadata, "inputs", net_def, "in_channels", meta_path)
    n_out = _channels(cfg.metadata, "outputs", net_def, "out_channels", meta_path)
    window = transforms.inferer(cfg.get("inferer"), _dims(cfg, net_def))
    dims = len(window["patch_size"])
    fields: dict[str, Any] = {"normalization": {"kind": "none"}}
    if cfg.has("preprocessing"):
        fields.update(transforms.preprocessing(cfg, dims, n_in))
    post = transforms.postprocessing(cfg) if cfg.has("postprocessing") else {}
    input_names = _io(cfg.metadata, "inputs").get("channel_def") or {}
    if archive:
        architecture: dict[str, Any] = {"name": "torchscript", "path": "models/model.ts"}
    else:
        assert net_def is not None
        architecture = {"name": MONAI_CONFIG, "network_def": net_def}
    architecture.update(in_channels=n_in, out_channels=n_out, spatial_dims=dims)
    config = validate_config(
        {
            "name": str(cfg.metadata.get("name") or folder.resolve().name),
            "architecture": architecture,
            "spatial_dims": dims,
            "inputs": {
                "channels": [str(input_names.get(str(i), f"ch{i + 1}")) for i in range(n_in)],
                "normalization": fields.pop("normalization"),
            },
            **fields,
            **window,
            **post,
            "classes": _classes(cfg.metadata, n_out, meta_path),
            "card": {
                k: cfg.metadata[k]
                for k in ("version", "description", "authors", "license")
                if isinstance(cfg.metadata.get(k), str)
            }
            | {"source": "monai bundle"},
        },
        path=str(cfg.path),
    )
    data = weights.read_bytes()
    digest = hashlib.sha256(cfg.metadata_path.read_bytes())
    digest.update(cfg.path.read_bytes())
    digest.update(data)
    state = None if archive else _state_dict(data, weights, trust_pickle)
    if state is not None and not trust_code:
        expected = meta_shapes(config)
        if expected is not None:
            check_shapes(expected, tensor_shapes(state), str(weights))
    contents = _Contents(digest.hexdigest(), state, None, data if archive else None)
    bundle = MonaiBundle(
        folder, config, None if archive else weights, trust_pickle=trust_pickle, contents=contents
    )
    bundle.trust_code = trust_code
    return bundle


def _dims(cfg: MonaiConfig, net_def: Mapping[str, Any] | None) -> int:
    dims = (net_def or {}).get("spatial_dims") or (net_def or {}).get("dimensions")
    if isinstance(dims, int):
        return dims
    shape = _io(cfg.metadata, "inputs").get("spatial_shape")
    return len(shape) if isinstance(shape, list) and len(shape) in (2, 3) else 3
