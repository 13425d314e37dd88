"""segmentation-models-pytorch networks (``smp.Unet``, ``smp.DeepLabV3Plus``, ...) built from plain data.

The architecture block of model.yaml names the class (``name: smp.Unet``) and holds its keyword
arguments, with ``out_channels`` standing for smp's ``classes`` (every tilewise architecture says
``out_channels``). The encoder is always built with ``encoder_weights=None``: the bundle's weights
replace any pre-trained ones, and nothing may be downloaded at run time. smp needs torchvision (through
timm), and the torchvision wheels reachable here only import beside the CUDA torch, so smp lives in the
second environment (``make venv-vision``); elsewhere an smp bundle fails with one line that says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from pipeline.errors import BundleError

SMP_PREFIX = "smp."
INSTALL_HINT = (
    "smp models need segmentation-models-pytorch and a torchvision built for this torch "
    "(`make venv-vision` builds that environment, see docs/models.md)"
)


def import_smp() -> Any:
    """The ``segmentation_models_pytorch`` module, or one BundleError saying why and how to get it."""
    try:
        import segmentation_models_pytorch as smp
    except Exception as exc:  # ImportError, or torchvision's RuntimeError beside a CPU torch
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise BundleError(
            f"segmentation-models-pytorch cannot be imported ({reason}); {INSTALL_HINT}"
        ) from exc
    return smp


def smp_class(name: str) -> type[nn.Module]:
    """``smp.Unet`` -> ``segmentation_models_pytorch.Unet``; an unknown name lists the known ones."""
    smp = import_smp()
    cls_name = name[len(SMP_PREFIX) :]
    obj = getattr(smp, cls_name, None) if cls_name and not cls_name.startswith("_") else None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module) and hasattr(obj, "from_pretrained")):
        known = sorted(
            n
            for n in dir(smp)
            if isinstance(getattr(smp, n), type)
            and issubclass(getattr(smp, n), nn.Module)
            and hasattr(getattr(smp, n), "from_pretrained")
        )
        raise BundleError(
            f"unknown architecture {name!r}; segmentation-models-pytorch has {', '.join(known)}"
        )
    return obj


def build_smp(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """The smp network ``name`` from model.yaml's keyword arguments (``out_channels`` as ``classes``)."""
    args = dict(kwargs)
    if args.pop("encoder_weights", None) is not None:
        raise BundleError(
            "architecture.encoder_weights must be null: the bundle's weights replace pre-trained ones, "
            "and nothing is downloaded at run time"
        )
    if args.get("aux_params") is not None:
        raise BundleError("architecture.aux_params (smp's classification head) is not supported")
    args.pop("aux_params", None)
    cls = smp_class(name)
    if "out_channels" in args:
        args["classes"] = args.pop("out_channels")
    try:
        return cls(encoder_weights=None, **args)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as exc:
        reason = (str(exc).strip().strip("\"'").splitlines() or [type(exc).__name__])[0]
        reason = reason if len(reason) <= 240 else reason[:240] + "..."  # smp lists every encoder
        raise BundleError(f"cannot build architecture {name!r}: {reason}") from exc


def output_stride(model: nn.Module) -> int:
    """What window edges must be a multiple of (smp checks it on every forward)."""
    encoder = getattr(model, "encoder", None)
    return int(getattr(encoder, "output_stride", 32) or 1)
