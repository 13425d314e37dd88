"""The content of ``model.yaml``: what a net needs to be used right, validated before any scene is read.

A net alone is not enough to segment a scene: the wrong bands, normalisation or patch size give
confident garbage. The schema is strict (unknown keys are errors, so a typo is not silently ignored)
and checks fields against each other (channels against ``in_channels``, classes against
``out_channels``), so a bundle that loads is one that can be used. See docs/contracts.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import BundleError
from pipeline.formats.colours import TABLEAU_10
from pipeline.formats.colours import default_color as default_color  # the one default-colour rule

CONFIG_NAME = "model.yaml"
WEIGHTS_NAME = "weights.safetensors"
PALETTE = TABLEAU_10
NATIVE = "NATIVE"
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Normalization(_Strict):
    """How raw pixel values become model input; which fields matter depends on ``kind``."""

    kind: Literal[
        "none",
        "zscore",
        "percentile",
        "ct_window",
        "scale",
        "clip_zscore",
        "scene_zscore",
        "scene_rescale",
        "per_channel",
    ] = "none"
    mean: list[float] | None = None
    std: list[float] | None = None
    lower: float = 2.0  # percentile: percent, computed per scene
    upper: float = 98.0
    center: float | None = None  # ct_window
    width: float | None = None
    out_min: float = 0.0  # ct_window: the window maps onto [out_min, out_max] (MONAI's b_min, b_max)
    out_max: float = 1.0
    factor: float = 1.0  # scale: x * factor + offset
    offset: float = 0.0
    clip_lower: list[float] | None = None  # clip_zscore: per channel, clip then (x - mean) / std
    clip_upper: list[float] | None = None  # (nnU-Net's CT normalisation)
    nonzero: bool = False  # scene_zscore: statistics over (and applied to) non-zero values only
    channel_wise: bool = True  # scene_zscore: per channel, or one mean/std over all channels
    # scene_zscore with nonzero: a voxel counts where its own channel is non-zero (MONAI's rule), or
    # where any channel is, holes filled (nnU-Net's use_mask_for_norm mask; Preprocessor.compute_holes)
    nonzero_mask: Literal["channel", "any"] = "channel"
    # scene_zscore, scene_rescale: statistics over the file's own voxels, before any resampling to
    # target_spacing (nnU-Net normalises, then resamples); else over the model's grid (MONAI)
    native_stats: bool = False
    # per_channel: one normalisation per input channel (nnU-Net's plans may name a scheme per channel,
    # e.g. CT and z-score); each one's per-channel lists hold its own channel's single value
    per_channel: list[Normalization] | None = None

    @model_validator(mode="after")
    def _by_kind(self) -> Normalization:
        if self.kind == "per_channel":
            if not self.per_channel:
                raise ValueError("per_channel needs 'per_channel': one normalization per channel")
            if any(n.kind in ("per_channel", "percentile") for n in self.per_channel):
                raise ValueError("per_channel normalizations cannot be per_channel or percentile")
            for n in self.per_channel:
                if any(v is not None and len(v) != 1 for v in (n.mean, n.std, n.clip_lower, n.clip_upper)):
                    raise ValueError("a per_channel normalization takes one value per list (its channel's)")
        elif self.per_channel is not None:
            raise ValueError(f"'per_channel' applies to kind per_channel, not {self.kind}")
        if self.kind in ("zscore", "clip_zscore"):
            if self.mean is None or self.std is None:
                raise ValueError(f"{self.kind} needs 'mean' and 'std' (one value per channel)")
            if any(s <= 0 for s in self.std):
                raise ValueError("zscore 'std' values must be > 0")
        if self.kind == "clip_zscore":
            lo, hi = self.clip_lower, self.clip_upper
            if (
                lo is None
                or hi is None
                or len(lo) != len(hi)
                or any(a > b for a, b in zip(lo, hi, strict=True))
            ):
                raise ValueError("clip_zscore needs 'clip_lower' <= 'clip_upper' (one value per channel)")
        elif self.kind == "percentile" and not 0.0 <= self.lower < self.upper <= 100.0:
            raise ValueError(f"percentile needs 0 <= lower < upper <= 100, got {self.lower}, {self.upper}")
        elif self.kind == "ct_window":
            if self.center is None or self.width is None:
                raise ValueError("ct_window needs 'center' and 'width'")
            if self.width <= 0:
                raise ValueError("ct_window 'width' must be > 0")
            if self.out_max <= self.out_min:
                raise ValueError("ct_window needs out_min < out_max")
        return self


class Inputs(_Strict):
    channels: list[str] = Field(min_length=1)
    band_indexes: list[int] | None = None  # 1-based source bands / channels
    normalization: Normalization = Field(default_factory=Normalization)
    crop_nonzero: bool = False  # NIfTI: run on the box of voxels non-zero in any channel (nnU-Net)

    @model_validator(mode="after")
    def _consistent(self) -> Inputs:
        n = len(self.channels)
        if self.band_indexes is not None:
            if len(self.band_indexes) != n:
                raise ValueError(f"band_indexes has {len(self.band_indexes)} entries for {n} channels")
            if any(b < 1 for b in self.band_indexes):
                raise ValueError("band_indexes are 1-based and must be >= 1")
        norm = self.normalization
        if norm.per_channel is not None and len(norm.per_channel) != n:
            count = len(norm.per_channel)
            raise ValueError(f"normalization.per_channel has {count} entries for {n} channels")
        for key in ("mean", "std", "clip_lower", "clip_upper"):
            values = getattr(norm, key)
            if values is not None and len(values) != n:
                raise ValueError(f"normalization.{key} has {len(values)} values for {n} channels")
        return self


class ClassSpec(_Strict):
    name: str = Field(min_length=1)
    color: str

    @field_validator("color")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _HEX.match(v):
            raise ValueError(f"color must look like '#rrggbb', got {v!r}")
        return v.lower()

    @property
    def rgb(self) -> tuple[int, int, int]:
        return int(self.color[1:3], 16), int(self.color[3:5], 16), int(self.color[5:7], 16)


class Postprocess(_Strict):
    """Label clean-up after the argmax (MONAI's ``KeepLargestConnectedComponentd``)."""

    keep_largest: bool = False
    applied_labels: list[int] | None = None  # None: every foreground label
    independent: bool = True  # each label on its own, or their union as one foreground
    connectivity: int | None = None  # None: full (faces, edges and corners)
    num_components: int = Field(default=1, ge=1)


class Resampling(_Strict):
    """nnU-Net's resampling to ``target_spacing`` and back (its configuration's ``resampling_fn_*_kwargs``):
    the case is normalised first, resized with splines of ``order`` (``order_z`` along an anisotropic
    axis), and the blended logits go back at ``score_order``/``score_order_z`` before the argmax."""

    kind: Literal["nnunet"] = "nnunet"
    order: Literal[0, 1, 3] = 3
    order_z: Literal[0, 1] = 0
    force_separate_z: bool | None = None
    score_order: Literal[0, 1] = 1
    score_order_z: Literal[0, 1] = 0
    score_force_separate_z: bool | None = None
    # the logits resampled back: computed in float64 and stored as float16, as nnU-Net's export does
    # (the dtype of its float16 sums), or kept float32 (``--accumulate float32``)
    score_dtype: Literal["float16", "float32"] = "float16"

    def as_tuple(self) -> tuple[Any, ...]:
        """The reader's ``resampling`` option (``pipeline.formats.spline.NnUNetResampling``)."""
        return (self.order, self.order_z, self.force_separate_z, self.score_order, self.score_order_z,
                self.score_force_separate_z, self.score_dtype)  # fmt: skip


class BundleConfig(_Strict):
    """The validated content of ``model.yaml``."""

    format_version: Literal[1] = 1
    name: str = Field(min_length=1)
    architecture: dict[str, Any]
    spatial_dims: Literal[2, 3]
    inputs: Inputs
    orientation: str = "RAS"
    # a null entry keeps the file's spacing on that axis (nnU-Net's 2-D configurations: between slices)
    target_spacing: list[float | None] | None = None
    # how target_spacing lays out the engine grid: both grids spanning the same extent, or MONAI's
    # Spacing (first voxel centres aligned, the step exactly the spacing ratio)
    spacing_grid: Literal["extent", "monai"] = "extent"
    # how labels go back to the input's grid when it was resampled: nearest labels, or the (activated)
    # scores interpolated linearly, then argmax (MONAI's Invertd(nearest_interp=False) before AsDiscreted)
    invert: Literal["labels", "scores"] = "labels"
    # None: tilewise's linear resampling of raw pixels; nnU-Net's own (see Resampling)
    resampling: Resampling | None = None
    patch_size: list[int]
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    output_activation: Literal["softmax", "sigmoid", "none"] = "softmax"
    # how windows are laid out and blended: MONAI's grid (any blend the job asks for), or nnU-Net's grid
    # with its own gaussian, which its models were validated with
    grid: Literal["monai", "nnunet"] = "monai"
    # the weighted sums: float32, or float16 in nnU-Net's tile order as nnUNetPredictor sums them (its
    # labels exactly; needs an ``nnunet`` architecture, whose ``axes`` give that order)
    accumulate: Literal["float32", "nnunet"] = "float32"
    # where the activation runs: on each window before blending (tilewise's default), on the blended
    # scores (MONAI's inferers blend logits), or on the scores once inverted onto the input's grid (a
    # MONAI bundle's Activationsd after Invertd, nnU-Net's export: the logits are interpolated, then
    # activated; blended when nothing is inverted); labels are the same argmax either way for softmax
    activation_stage: Literal["window", "blended", "inverted"] = "window"
    blend: Literal["gaussian", "constant", "cosine", "crop", "nnunet"] | None = None  # None: the job's
    sigma_scale: float | None = Field(default=None, gt=0.0)
    batch_size: int | None = Field(default=None, ge=1)  # windows per forward pass, unless the job says
    postprocess: Postprocess | None = None
    classes: list[ClassSpec] = Field(min_length=1)
    card: dict[str, Any] = Field(default_factory=dict)

    @field_validator("orientation")
    @classmethod
    def _orientation(cls, v: str) -> str:
        v = v.upper()
        if v == NATIVE:  # the file's own voxel axes, never reoriented (nnU-Net models see them so)
            return v
        axes = [{"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}.get(c) for c in v]
        if len(v) != 3 or None in axes or len(set(axes)) != 3:
            raise ValueError(f"orientation must be 3 axis codes like 'RAS' or 'LPS', got {v!r}")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> BundleConfig:
        arch, dims = self.architecture, self.spatial_dims
        if not isinstance(arch.get("name"), str):
            raise ValueError(
                "architecture.name is required (unet, fcn, monai.<ClassName>, torchscript, export)"
            )
        for key in ("in_channels", "out_channels"):
            if not isinstance(arch.get(key), int):
                raise ValueError(f"architecture.{key} is required (an integer)")
        if "spatial_dims" in arch and arch["spatial_dims"] != dims:
            raise ValueError(f"architecture.spatial_dims {arch['spatial_dims']} != spatial_dims {dims}")
        if arch["in_channels"] != len(self.inputs.channels):
            raise ValueError(
                f"architecture.in_channels is {arch['in_channels']} but inputs.channels lists "
                f"{len(self.inputs.channels)}"
            )
        if arch["out_channels"] != len(self.classes):
            raise ValueError(
                f"architecture.out_channels is {arch['out_channels']} but classes lists {len(self.classes)}"
            )
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be unique, got {names}")
        if len(self.patch_size) != dims or any(p < 1 for p in self.patch_size):
            raise ValueError(f"patch_size must be {dims} positive integers, got {self.patch_size}")
        spacing = self.target_spacing
        if spacing is not None and (
            len(spacing) != dims
            or any(s is not None and s <= 0 for s in spacing)
            or (None in spacing and dims != 3)
        ):
            raise ValueError(
                f"target_spacing must be null or {dims} positive numbers (null entries only in 3-D: "
                "the file's own spacing on that axis)"
            )
        return self


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def validate_config(data: Any, *, path: str | None = None) -> BundleConfig:
    """Parse a dict (or pass through a BundleConfig), turning pydantic errors into BundleError."""
    if isinstance(data, BundleConfig):
        return data
    if not isinstance(data, Mapping):
        raise BundleError(f"expected a mapping at the top level, got {type(data).__name__}", path=path)
    try:
        return BundleConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise BundleError(f"invalid bundle: {_describe(exc)}", path=path) from exc
