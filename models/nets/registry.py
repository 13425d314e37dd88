"""Build a network from a plain config dict (the ``architecture`` block of a bundle's model.yaml).

Names: ``unet`` and ``fcn`` (ours), ``nnunet`` (the folds of an nnU-Net v2 model, rebuilt from its
plans with dynamic-network-architectures: :mod:`models.nets.nnunet`), ``monai.<ClassName>`` for any
network class in ``monai.networks.nets``, ``monai_config`` for a MONAI bundle's ``network_def``
(built by MONAI's ``ConfigParser``, see :mod:`models.nets.monai_config`), and ``smp.<ClassName>`` for
the networks of segmentation-models-pytorch (:mod:`models.nets.smp`; it needs the vision environment).
``torchscript`` / ``export`` / ``onnx`` name self-contained archives: they are files, not classes, so
:mod:`models.bundle.load` reads them with the rest of the bundle and this registry only knows their
names (to list them and to refuse building them).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from models.nets.fcn import FCN
from models.nets.nnunet import NnUNetNet
from models.nets.unet import UNet
from pipeline.errors import BundleError

LOCAL_MODELS: dict[str, type[nn.Module]] = {"unet": UNet, "fcn": FCN, "nnunet": NnUNetNet}
ARCHIVE_NAMES = ("torchscript", "export", "onnx")
MONAI_CONFIG = "monai_config"  # a MONAI bundle's network_def, kept as plain data
MONAI_PREFIX = "monai."
SMP_PREFIX = "smp."  # the same as models.nets.smp.SMP_PREFIX, which imports nothing heavy either


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
    if name.startswith(SMP_PREFIX):
        from models.nets.smp import smp_class

        return smp_class(name)
    known = ", ".join([*LOCAL_MODELS, *ARCHIVE_NAMES, MONAI_CONFIG, "monai.<ClassName>", "smp.<ClassName>"])
    raise BundleError(f"unknown architecture {name!r}; known: {known}")


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """Instantiate ``config['name']`` with the remaining keys as keyword arguments."""
    if not isinstance(config, Mapping) or "name" not in config:
        raise BundleError("architecture must be a mapping with a 'name' key")
    kwargs = {k: v for k, v in config.items() if k != "name"}
    name = config["name"]
    if name in ARCHIVE_NAMES:
        raise BundleError(
            f"architecture {name!r} is an archive file named by 'path', read with its bundle, not built"
        )
    if name == MONAI_CONFIG:
        from models.nets.monai_config import build_network_def

        if not isinstance(config.get("network_def"), Mapping):
            raise BundleError(f"architecture {MONAI_CONFIG!r} needs a 'network_def' mapping")
        return build_network_def(config["network_def"])
    if name.startswith(SMP_PREFIX):
        from models.nets.smp import build_smp

        return build_smp(name, kwargs)
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


def set_eval(module: nn.Module) -> nn.Module:
    """``module.eval()``, tolerating exported graphs (which refuse it but were traced in eval mode)."""
    with contextlib.suppress(NotImplementedError):
        module.eval()
    return module
