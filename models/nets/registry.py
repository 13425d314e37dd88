"""Build a network from a plain config dict (the ``architecture`` block of a bundle's model.yaml).

Names: ``unet`` and ``fcn`` (ours), ``monai.<ClassName>`` for any network class in
``monai.networks.nets``, and ``torchscript`` / ``export`` for self-contained archives.

Weights are never unpickled here. The only non-safetensors formats accepted are TorchScript
(``torch.jit.save``) and ``torch.export`` (``.pt2``) archives: both store a graph plus tensors,
and loading them reconstructs TorchScript/FX objects only, never arbitrary Python classes, so
a malicious file cannot run code the way a pickled ``torch.save`` checkpoint can.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.nets.fcn import FCN
from models.nets.unet import UNet
from pipeline.errors import BundleError

LOCAL_MODELS: dict[str, type[nn.Module]] = {"unet": UNet, "fcn": FCN}
ARCHIVE_NAMES = ("torchscript", "export")
MONAI_PREFIX = "monai."


def _monai_class(name: str) -> type[nn.Module]:
    import monai.networks.nets as nets  # imported lazily: monai is slow to import

    cls_name = name[len(MONAI_PREFIX) :]
    obj = getattr(nets, cls_name, None) if cls_name and not cls_name.startswith("_") else None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise BundleError(
            f"unknown architecture {name!r}: monai.networks.nets has no network class {cls_name!r}"
        )
    return obj


def resolve(name: str) -> type[nn.Module]:
    """The class behind an architecture name, or :class:`BundleError`."""
    if not isinstance(name, str) or not name:
        raise BundleError(f"architecture name must be a non-empty string, got {name!r}")
    if name in LOCAL_MODELS:
        return LOCAL_MODELS[name]
    if name.startswith(MONAI_PREFIX):
        return _monai_class(name)
    known = ", ".join([*LOCAL_MODELS, *ARCHIVE_NAMES, "monai.<ClassName>"])
    raise BundleError(f"unknown architecture {name!r}; known: {known}")


def build_model(config: Mapping[str, Any], *, base_dir: str | Path | None = None) -> nn.Module:
    """Instantiate ``config['name']`` with the remaining keys as keyword arguments.

    For ``torchscript`` / ``export`` the key ``path`` names the archive (relative to ``base_dir``);
    other keys such as ``in_channels`` are metadata only.
    """
    if not isinstance(config, Mapping) or "name" not in config:
        raise BundleError("architecture must be a mapping with a 'name' key")
    kwargs = {k: v for k, v in config.items() if k != "name"}
    name = config["name"]
    if name in ARCHIVE_NAMES:
        if "path" not in kwargs:
            raise BundleError(f"architecture {name!r} needs a 'path' to the archive")
        path = Path(kwargs["path"])
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        model = load_scripted(path)
        if name == "export" and path.suffix != ".pt2":
            raise BundleError("an 'export' archive must have the .pt2 suffix", path=str(path))
        return model
    cls = resolve(name)
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as exc:
        params = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
        raise BundleError(
            f"bad arguments for architecture {name!r}: {exc}; accepted: {', '.join(params)}"
        ) from exc
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, AssertionError, KeyError, IndexError, RuntimeError) as exc:
        raise BundleError(f"cannot build architecture {name!r}: {exc}") from exc


def load_scripted(path: str | Path) -> nn.Module:
    """Load a TorchScript file or a ``torch.export`` ``.pt2`` archive as a CPU module in eval mode.

    Dispatch is by suffix (``.pt2`` is export, anything else TorchScript), so no file is ever tried
    with a loader it was not written for. TorchScript is deprecated upstream: prefer ``.pt2``.
    """
    p = Path(path)
    if not p.is_file():
        raise BundleError("model archive not found", path=str(p))
    try:
        if p.suffix == ".pt2":
            module: nn.Module = torch.export.load(str(p)).module()
        else:
            with warnings.catch_warnings():  # TorchScript is deprecated upstream; still fine to load
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:  # loaders raise RuntimeError, ValueError, zip errors, ...
        kind = "torch.export" if p.suffix == ".pt2" else "TorchScript"
        raise BundleError(f"not a readable {kind} archive: {exc}", path=str(p)) from exc
    return set_eval(module)


def set_eval(module: nn.Module) -> nn.Module:
    """``module.eval()``, tolerating exported graphs (which refuse it but were traced in eval mode)."""
    with contextlib.suppress(NotImplementedError):
        module.eval()
    return module
