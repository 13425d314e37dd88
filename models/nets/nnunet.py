"""nnU-Net v2 networks rebuilt from ``plans.json``, and the folds of one model run as one net.

nnU-Net names its network by import path (``configurations[cfg].architecture``: ``network_class_name``,
``arch_kwargs`` and the ``_kw_requires_import`` among them, e.g. ``torch.nn.modules.conv.Conv3d``) and
builds it with ``pydoc.locate``, which imports whatever a file names. Here only classes from
``dynamic_network_architectures`` and ``torch.nn`` may be named; anything else is refused before any
import, so a plans file cannot make tilewise import arbitrary code.

:class:`NnUNetNet` is what the engine calls: it moves a window from the scene's axes to the network's
(nnU-Net's ``transpose_forward`` of SimpleITK's reversed axes), runs every fold with nnU-Net's
mirroring over its allowed axes, and averages, as ``nnUNetPredictor`` averages folds. Everything is
linear in the logits, so blending these averages equals nnU-Net's per-fold blending.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pipeline.errors import BundleError

ALLOWED_MODULES = ("dynamic_network_architectures", "torch.nn")


def locate(name: Any, what: str) -> type:
    """The class ``name`` (a dotted import path) from an allowed package, or :class:`BundleError`."""
    if not isinstance(name, str) or "." not in name:
        raise BundleError(f"{what} must be a dotted class path, got {name!r}")
    module, _, attr = name.rpartition(".")
    if not any(module == m or module.startswith(m + ".") for m in ALLOWED_MODULES):
        raise BundleError(
            f"{what} {name!r} is refused: only classes from {' and '.join(ALLOWED_MODULES)} may be named"
        )
    try:
        obj = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        hint = " (pip install dynamic-network-architectures)" if module.startswith("dynamic_") else ""
        raise BundleError(f"{what} {name!r} cannot be imported: {exc}{hint}") from exc
    except AttributeError as exc:
        raise BundleError(f"{what} {name!r} does not exist") from exc
    if not isinstance(obj, type):
        raise BundleError(f"{what} {name!r} is not a class")
    return obj


def build_network(
    network_class_name: str,
    arch_kwargs: Mapping[str, Any],
    kw_requires_import: Sequence[str],
    in_channels: int,
    out_channels: int,
) -> nn.Module:
    """One network as nnU-Net's ``get_network_from_plans`` builds it for inference (no deep supervision)."""
    kwargs = dict(arch_kwargs)
    for key in kw_requires_import:
        if kwargs.get(key) is not None:
            kwargs[key] = locate(kwargs[key], f"architecture argument {key}")
    cls = locate(network_class_name, "network class")
    if not issubclass(cls, nn.Module):
        raise BundleError(f"network class {network_class_name!r} is not a torch module")
    kwargs["deep_supervision"] = False
    try:
        return cls(input_channels=in_channels, num_classes=out_channels, **kwargs)
    except (TypeError, ValueError, AssertionError, KeyError, IndexError, RuntimeError) as exc:
        raise BundleError(f"cannot build {network_class_name}: {exc}") from exc


class NnUNetNet(nn.Module):
    """The folds of an nnU-Net model as one callable on ``(B, C, *window)`` in the scene's axes.

    ``axes[i]`` is the window axis that is the network's axis ``i``; ``slice_axis`` (network axes) is
    the one-voxel axis a 2-D network runs slice by slice over; ``mirror_axes`` are nnU-Net's
    ``inference_allowed_mirroring_axes`` (axes of the network's input), empty for no mirroring.
    ``separate_folds``: the folds' outputs side by side (``folds * K`` channels) rather than averaged,
    for nnU-Net's float16 blending, which averages the folds only after blending each.
    """

    def __init__(
        self,
        *,
        network_class_name: str,
        arch_kwargs: Mapping[str, Any],
        kw_requires_import: Sequence[str] = (),
        in_channels: int,
        out_channels: int,
        folds: int = 1,
        axes: Sequence[int] = (0, 1, 2),
        slice_axis: int | None = None,
        mirror_axes: Sequence[int] = (),
        spatial_dims: int = 3,
        separate_folds: bool = False,
    ) -> None:
        super().__init__()
        if folds < 1:
            raise BundleError("an nnU-Net model needs at least one fold")
        if sorted(axes) != list(range(spatial_dims)):
            raise BundleError(f"axes {list(axes)} is not a permutation of {spatial_dims} axes")
        self.out_channels = out_channels
        self.separate_folds = separate_folds
        self.axes = tuple(int(a) for a in axes)
        self.slice_axis = slice_axis
        self.mirror_axes = tuple(int(a) for a in mirror_axes)
        self.folds = nn.ModuleList(
            build_network(network_class_name, arch_kwargs, kw_requires_import, in_channels, out_channels)
            for _ in range(folds)
        )
        dims = spatial_dims - (slice_axis is not None)
        flips = [a + 2 for a in self.mirror_axes]
        if any(a >= dims for a in self.mirror_axes):
            raise BundleError(f"mirror axes {list(self.mirror_axes)} do not fit a {dims}-D network")
        # nnU-Net's order: the plain prediction, then every non-empty combination of mirrored axes
        self._flips = [c for n in range(1, len(flips) + 1) for c in itertools.combinations(flips, n)]

    def _mirrored(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = net(x)
        for axes in self._flips:
            out = out + torch.flip(net(torch.flip(x, axes)), axes)
        return out / (len(self._flips) + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        perm = (0, 1, *(2 + a for a in self.axes))
        y = x.permute(perm)
        if self.slice_axis is not None:
            y = y.squeeze(2 + self.slice_axis)
        if self.separate_folds:  # each fold blended apart, as nnU-Net does, then averaged after blending
            out = torch.cat([self._mirrored(net, y) for net in self.folds], dim=1)
        else:
            out = self._mirrored(self.folds[0], y)
            for net in self.folds[1:]:
                out = out + self._mirrored(net, y)
            if len(self.folds) > 1:
                out = out / len(self.folds)
        if self.slice_axis is not None:
            out = out.unsqueeze(2 + self.slice_axis)
        inverse = [0, 1, *(2 + self.axes.index(i) for i in range(len(self.axes)))]
        return out.permute(inverse).contiguous()
