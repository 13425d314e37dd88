"""Fully convolutional network (Long, Shelhamer & Darrell, 2015): FCN-32s, FCN-16s and FCN-8s.

A VGG-style backbone whose dense layers become convolutions, so it maps any image size to a score
map, then transposed convolutions bring scores back to full resolution. 32s upsamples the last
stage only and is coarse (the seed's "problem"); 16s and 8s add score layers on the pool4/pool3
features, fused by summation after x2 upsampling, to recover detail. Layers are dims-generic, so the
same net runs in 3-D. Inputs of any size are padded to a multiple of ``2**len(features)`` and
cropped back, as in :class:`models.nets.unet.UNet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from models.nets.unet import (
    Norm,
    PadMode,
    check_dims,
    check_features,
    conv_cls,
    conv_transpose_cls,
    crop_to,
    norm_layer,
    pad_to_multiple,
    pool_cls,
)

Variant = Literal["32s", "16s", "8s"]
VARIANTS: dict[str, int] = {"32s": 0, "16s": 1, "8s": 2}  # number of skip fusions


def bilinear_kernel(channels: int, factor: int, dims: int) -> torch.Tensor:
    """Weights that make a transposed conv (kernel 2f, stride f) a per-channel (bi/tri)linear resize.

    FCN initialises its upsampling this way: training starts from plain interpolation.
    """
    size = 2 * factor
    centre = factor - 0.5
    og = torch.arange(size, dtype=torch.float32)
    one_d = 1 - (og - centre).abs() / factor
    kernel = one_d
    for _ in range(dims - 1):
        kernel = kernel.unsqueeze(-1) * one_d
    weight = torch.zeros((channels, channels) + (size,) * dims)
    for c in range(channels):
        weight[c, c] = kernel
    return weight


def upsampler(dims: int, channels: int, factor: int) -> nn.Module:
    """Transposed conv that scales by exactly ``factor`` (kernel 2f, stride f, padding f/2)."""
    layer = conv_transpose_cls(dims)(
        channels, channels, kernel_size=2 * factor, stride=factor, padding=factor // 2, bias=False
    )
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, factor, dims))
    return layer


def _conv_block(dims: int, cin: int, cout: int, kernel: int, norm: str) -> list[nn.Module]:
    return [
        conv_cls(dims)(cin, cout, kernel, padding=kernel // 2, bias=norm == "none"),
        norm_layer(norm, dims, cout),
        nn.ReLU(inplace=True),
    ]


class FCN(nn.Module):
    """FCN with a VGG-like backbone of ``len(features)`` conv stages, each ending in a x2 max-pool.

    ``convs_per_stage`` defaults to VGG16's pattern (2, 2, 3, 3, 3). The head replaces VGG's fc6/fc7
    with a 3x3 and a 1x1 convolution of ``head_channels`` (default ``2 * features[-1]``), then a 1x1
    classifier. The skip score layers start at zero, so a fresh 8s net equals its 32s core, as in the
    paper's staged training.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 2,
        variant: Variant = "8s",
        features: Sequence[int] = (32, 64, 128, 256, 256),
        convs_per_stage: int | Sequence[int] | None = None,
        head_channels: int | None = None,
        norm: Norm = "batch",
        pad_mode: PadMode = "replicate",
    ) -> None:
        super().__init__()
        dims = check_dims(spatial_dims)
        feats = check_features(features)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        fusions = VARIANTS[variant]
        if len(feats) < fusions + 1:
            raise ValueError(f"FCN-{variant} needs at least {fusions + 1} stages, got features {list(feats)}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if pad_mode not in ("replicate", "zeros"):
            raise ValueError(f"pad_mode must be 'replicate' or 'zeros', got {pad_mode!r}")
        if convs_per_stage is None:
            convs = tuple(2 if i < 2 else 3 for i in range(len(feats)))
        elif isinstance(convs_per_stage, int):
            convs = (convs_per_stage,) * len(feats)
        else:
            convs = tuple(int(c) for c in convs_per_stage)
        if len(convs) != len(feats) or any(c < 1 for c in convs):
            raise ValueError(f"convs_per_stage must be >= 1 per stage ({len(feats)} stages), got {convs}")

        self.spatial_dims = dims
        self.variant = variant
        self.pad_mode = pad_mode
        self.multiple = 2 ** len(feats)
        k = int(out_channels)

        self.stages = nn.ModuleList()
        ch = int(in_channels)
        for f, n in zip(feats, convs, strict=True):
            layers: list[nn.Module] = []
            for _ in range(n):
                layers += _conv_block(dims, ch, f, 3, norm)
                ch = f
            layers.append(pool_cls(dims)(kernel_size=2, stride=2))
            self.stages.append(nn.Sequential(*layers))
        head = int(head_channels) if head_channels else 2 * feats[-1]
        self.head = nn.Sequential(
            *_conv_block(dims, ch, head, 3, norm), *_conv_block(dims, head, head, 1, norm)
        )
        self.score = conv_cls(dims)(head, k, kernel_size=1)

        # Skip scores on pool4, pool3 (the outputs of the 2nd- and 3rd-last stages), deepest first.
        self.skip_scores = nn.ModuleList()
        self.skip_ups = nn.ModuleList()
        for i in range(fusions):
            score = conv_cls(dims)(feats[-2 - i], k, kernel_size=1)
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)
            self.skip_scores.append(score)
            self.skip_ups.append(upsampler(dims, k, 2))
        self.final_up = upsampler(dims, k, 2 ** (len(feats) - fusions))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        x = pad_to_multiple(x, self.multiple, self.pad_mode)
        pools: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            pools.append(x)
        y = self.score(self.head(x))
        for i, (score, up) in enumerate(zip(self.skip_scores, self.skip_ups, strict=True)):
            y = up(y) + score(pools[-2 - i])
        return crop_to(self.final_up(y), spatial)
