"""Weights against architecture: tensor names and shapes checked before any weights are used.

A state dict that does not fit its architecture would otherwise fail deep inside ``load_state_dict``
(or, with ``strict=False``, silently leave layers random). Shapes come from the net built on the meta
device, so the check costs neither memory nor initialisation, and saving and loading use the same one.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from models.bundle.schema import BundleConfig
from models.nets.registry import ARCHIVE_NAMES, build_model
from pipeline.errors import BundleError


def meta_model(config: BundleConfig) -> nn.Module | None:
    """The architecture built on the meta device: shapes without memory or init cost.

    None for archives and for third-party nets that cannot live on meta (``Bundle.build`` checks those).
    """
    if config.architecture["name"] in ARCHIVE_NAMES:
        return None
    try:
        with torch.device("meta"):
            return build_model(config.architecture)
    except BundleError:
        raise
    except Exception:
        return None


def meta_shapes(config: BundleConfig) -> dict[str, tuple[int, ...]] | None:
    model = meta_model(config)
    return None if model is None else {k: tuple(v.shape) for k, v in model.state_dict().items()}


def tensor_shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def check_shapes(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], where: str
) -> None:
    """Strict comparison of state-dict shapes, naming the first offending tensor."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing:
        raise BundleError(f"weights lack tensor {missing[0]!r} ({len(missing)} missing in all)", path=where)
    if unexpected:
        raise BundleError(
            f"weights hold unexpected tensor {unexpected[0]!r} ({len(unexpected)} in all)", path=where
        )
    for k, shape in expected.items():
        if tuple(found[k]) != tuple(shape):
            raise BundleError(
                f"tensor {k!r} has shape {tuple(found[k])} but the architecture expects {tuple(shape)}",
                path=where,
            )
