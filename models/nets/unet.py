"""U-Net (Ronneberger et al., 2015) in 2-D and 3-D, generalised from the seed's reference net.

The seed's net only works when H and W are divisible by 2**depth and only in 2-D. Tiles at scene
borders and medical volumes rarely oblige, so ``forward`` pads to the next multiple of 2**depth and
crops back: the output always has exactly the input's spatial shape. The small dims-generic helpers
here (layer classes, padding, cropping) are shared with :mod:`models.nets.fcn`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["batch", "instance", "none"]
PadMode = Literal["replicate", "zeros"]
Upsample = Literal["transposed", "bilinear", "trilinear", "interp"]

UPSAMPLE_MODES = ("transposed", "bilinear", "trilinear", "interp")


def check_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def conv_cls(dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    return nn.Conv2d if dims == 2 else nn.Conv3d


def conv_transpose_cls(dims: int) -> type[nn.ConvTranspose2d] | type[nn.ConvTranspose3d]:
    return nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d


def pool_cls(dims: int) -> type[nn.MaxPool2d] | type[nn.MaxPool3d]:
    return nn.MaxPool2d if dims == 2 else nn.MaxPool3d


def norm_layer(norm: str, dims: int, channels: int) -> nn.Module:
    """Batch norm as in the seed; instance norm for batch-size-1 3-D training; or nothing."""
    if norm == "batch":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm3d(channels)
    if norm == "instance":
        return (
            nn.InstanceNorm2d(channels, affine=True)
            if dims == 2
            else nn.InstanceNorm3d(channels, affine=True)
        )
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be 'batch', 'instance' or 'none', got {norm!r}")


def check_features(features: Sequence[int], what: str = "features") -> tuple[int, ...]:
    feats = tuple(int(f) for f in features)
    if not feats or any(f < 1 for f in feats):
        raise ValueError(f"{what} must be a non-empty list of positive widths, got {list(features)!r}")
    return feats


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "replicate") -> torch.Tensor:
    """Pad the high end of every spatial axis of ``(N, C, *spatial)`` up to a multiple of ``multiple``.

    Padding only at the high end keeps pixel (0, 0) where it was, so cropping back is a plain slice.
    """
    if mode not in ("replicate", "zeros"):
        raise ValueError(f"pad_mode must be 'replicate' or 'zeros', got {mode!r}")
    extra = [(-int(s)) % multiple for s in x.shape[2:]]
    if not any(extra):
        return x
    pads: list[int] = []
    for e in reversed(extra):  # F.pad lists the last axis first
        pads += [0, e]
    if mode == "zeros":
        return F.pad(x, pads, mode="constant", value=0.0)
    return F.pad(x, pads, mode="replicate")


def crop_to(x: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`."""
    if tuple(x.shape[2:]) == tuple(spatial):
        return x
    return x[(slice(None), slice(None), *(slice(0, int(s)) for s in spatial))]


class DoubleConv(nn.Sequential):
    """(conv 3, norm, ReLU) x 2: the seed's building block, for any dimensionality."""

    def __init__(self, dims: int, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        conv = conv_cls(dims)
        bias = norm == "none"  # a following norm layer makes the conv bias redundant
        super().__init__(
            conv(in_channels, out_channels, 3, padding=1, bias=bias),
            norm_layer(norm, dims, out_channels),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 3, padding=1, bias=bias),
            norm_layer(norm, dims, out_channels),
            nn.ReLU(inplace=True),
        )


def up_layer(dims: int, in_channels: int, out_channels: int, upsample: str) -> nn.Module:
    """x2 upsampling that also maps ``in_channels`` to ``out_channels``.

    "transposed" is learnable (the seed); the interpolating modes use (bi/tri)linear resizing and a
    1x1 conv, which avoids checkerboard artefacts. "bilinear", "trilinear" and "interp" all choose
    the linear mode that matches ``dims``, so one config string works for 2-D and 3-D.
    """
    if upsample == "transposed":
        return conv_transpose_cls(dims)(in_channels, out_channels, kernel_size=2, stride=2)
    if upsample in ("bilinear", "trilinear", "interp"):
        mode = "bilinear" if dims == 2 else "trilinear"
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode=mode, align_corners=False),
            conv_cls(dims)(in_channels, out_channels, kernel_size=1),
        )
    raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {upsample!r}")


class UNet(nn.Module):
    """Encoder-decoder with skip connections; depth is ``len(features)`` poolings.

    The bottleneck has ``2 * features[-1]`` channels, as in the seed. Input of any spatial size is
    accepted (padded internally with ``pad_mode`` to a multiple of ``2**depth``).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        out_channels: int = 2,
        features: Sequence[int] = (32, 64, 128, 256),
        upsample: Upsample = "transposed",
        norm: Norm = "batch",
        pad_mode: PadMode = "replicate",
    ) -> None:
        super().__init__()
        dims = check_dims(spatial_dims)
        feats = check_features(features)
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        if pad_mode not in ("replicate", "zeros"):
            raise ValueError(f"pad_mode must be 'replicate' or 'zeros', got {pad_mode!r}")
        self.spatial_dims = dims
        self.features = feats
        self.pad_mode = pad_mode
        self.multiple = 2 ** len(feats)

        self.downs = nn.ModuleList()
        ch = int(in_channels)
        for f in feats:
            self.downs.append(DoubleConv(dims, ch, f, norm))
            ch = f
        self.pool = pool_cls(dims)(kernel_size=2, stride=2)
        self.bottleneck = DoubleConv(dims, feats[-1], feats[-1] * 2, norm)

        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        ch = feats[-1] * 2
        for f in reversed(feats):
            self.ups.append(up_layer(dims, ch, f, upsample))
            self.up_convs.append(DoubleConv(dims, 2 * f, f, norm))
            ch = f
        self.final_conv = conv_cls(dims)(feats[0], int(out_channels), kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        x = pad_to_multiple(x, self.multiple, self.pad_mode)
        skips: list[torch.Tensor] = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, conv, skip in zip(self.ups, self.up_convs, reversed(skips), strict=True):
            x = conv(torch.cat((skip, up(x)), dim=1))
        return crop_to(self.final_conv(x), spatial)
