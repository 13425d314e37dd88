"""Model bundles: ``DIR/model.yaml`` + ``DIR/weights.safetensors``, everything needed to use a net right.

A net alone is not enough to segment a scene: the wrong bands, normalisation or patch size give
confident garbage. The bundle carries them next to the weights, and loading validates all of it up
front (YAML with the safe loader, cross-field checks, tensor shapes against the built net), so a bad
bundle fails before any scene is read. Weights are safetensors; pickle is refused unless asked for.
See docs/contracts.md for the file format.
"""

from __future__ import annotations

import colorsys
import hashlib
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from models.nets.registry import ARCHIVE_NAMES, build_model, set_eval
from pipeline.atomic import atomic_path
from pipeline.errors import BundleError

CONFIG_NAME = "model.yaml"
WEIGHTS_NAME = "weights.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
# Tableau 10: distinguishable, colour-blind friendlier than primaries; later classes get golden-ratio hues.
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Normalization(_Strict):
    """How raw pixel values become model input; which fields matter depends on ``kind``."""

    kind: Literal["none", "zscore", "percentile", "ct_window", "scale"] = "none"
    mean: list[float] | None = None
    std: list[float] | None = None
    lower: float = 2.0  # percentile: percent, computed per scene
    upper: float = 98.0
    center: float | None = None  # ct_window
    width: float | None = None
    factor: float = 1.0  # scale: x * factor + offset
    offset: float = 0.0

    @model_validator(mode="after")
    def _by_kind(self) -> Normalization:
        if self.kind == "zscore":
            if self.mean is None or self.std is None:
                raise ValueError("zscore needs 'mean' and 'std' (one value per channel)")
            if any(s <= 0 for s in self.std):
                raise ValueError("zscore 'std' values must be > 0")
        elif self.kind == "percentile" and not 0.0 <= self.lower < self.upper <= 100.0:
            raise ValueError(f"percentile needs 0 <= lower < upper <= 100, got {self.lower}, {self.upper}")
        elif self.kind == "ct_window":
            if self.center is None or self.width is None:
                raise ValueError("ct_window needs 'center' and 'width'")
            if self.width <= 0:
                raise ValueError("ct_window 'width' must be > 0")
        return self


class Inputs(_Strict):
    channels: list[str] = Field(min_length=1)
    band_indexes: list[int] | None = None  # 1-based source bands / channels
    normalization: Normalization = Field(default_factory=Normalization)

    @model_validator(mode="after")
    def _consistent(self) -> Inputs:
        n = len(self.channels)
        if self.band_indexes is not None:
            if len(self.band_indexes) != n:
                raise ValueError(f"band_indexes has {len(self.band_indexes)} entries for {n} channels")
            if any(b < 1 for b in self.band_indexes):
                raise ValueError("band_indexes are 1-based and must be >= 1")
        norm = self.normalization
        for key in ("mean", "std"):
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


class BundleConfig(_Strict):
    """The validated content of ``model.yaml``."""

    format_version: Literal[1] = 1
    name: str = Field(min_length=1)
    architecture: dict[str, Any]
    spatial_dims: Literal[2, 3]
    inputs: Inputs
    orientation: str = "RAS"
    target_spacing: list[float] | None = None
    patch_size: list[int]
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    output_activation: Literal["softmax", "sigmoid", "none"] = "softmax"
    classes: list[ClassSpec] = Field(min_length=1)
    card: dict[str, Any] = Field(default_factory=dict)

    @field_validator("orientation")
    @classmethod
    def _orientation(cls, v: str) -> str:
        v = v.upper()
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
        if self.target_spacing is not None and (
            len(self.target_spacing) != dims or any(s <= 0 for s in self.target_spacing)
        ):
            raise ValueError(f"target_spacing must be null or {dims} positive numbers")
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


def _meta_model(config: BundleConfig) -> nn.Module | None:
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


def _meta_shapes(config: BundleConfig) -> dict[str, tuple[int, ...]] | None:
    model = _meta_model(config)
    return None if model is None else {k: tuple(v.shape) for k, v in model.state_dict().items()}


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


class Bundle:
    """A loaded, validated bundle. ``build()`` gives the ready-to-run net."""

    def __init__(self, path: Path, config: BundleConfig, weights: Path | None, *, trust_pickle: bool = False):
        self.path = path
        self.config = config
        self.weights = weights
        self.trust_pickle = trust_pickle

    def __repr__(self) -> str:
        return f"Bundle({self.config.name!r}, path={str(self.path)!r})"

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.config.classes]

    @property
    def class_colors(self) -> list[tuple[int, int, int]]:
        return [c.rgb for c in self.config.classes]

    @property
    def num_classes(self) -> int:
        return len(self.config.classes)

    @property
    def archive(self) -> Path | None:
        arch = self.config.architecture
        if arch["name"] not in ARCHIVE_NAMES or "path" not in arch:
            return None
        p = Path(arch["path"])
        return p if p.is_absolute() else self.path / p

    @cached_property
    def hash(self) -> str:
        """sha256 (hex) over model.yaml, then the weights file, then any archive: identifies results."""
        h = hashlib.sha256()
        for p in (self.path / CONFIG_NAME, self.weights, self.archive):
            if p is not None and p.is_file():
                with p.open("rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
        return h.hexdigest()

    def _state_dict(self) -> dict[str, torch.Tensor] | None:
        if self.weights is None:
            return None
        if self.weights.suffix == ".safetensors":
            try:
                return load_file(str(self.weights))
            except (SafetensorError, OSError) as exc:
                raise BundleError(f"unreadable safetensors file: {exc}", path=str(self.weights)) from exc
        if not self.trust_pickle:
            raise BundleError(_pickle_refusal(self.weights), path=str(self.weights))
        try:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BundleError(
                f"cannot load weights (weights_only=True): {exc}", path=str(self.weights)
            ) from exc
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise BundleError("checkpoint is not a state dict of tensors", path=str(self.weights))
        return state

    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        """The net with its weights loaded, on ``device``, in eval mode."""
        model = build_model(self.config.architecture, base_dir=self.path)
        state = self._state_dict()
        if state is not None:
            expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            check_shapes(expected, {k: tuple(v.shape) for k, v in state.items()}, str(self.weights))
            model.load_state_dict(state, strict=True)
        elif self.archive is None:
            raise BundleError(f"no {WEIGHTS_NAME} in the bundle", path=str(self.path))
        return set_eval(model.to(device))

    def param_count(self) -> int:
        """Number of parameters, counted on the meta device so nothing is allocated."""
        model = _meta_model(self.config)
        model = self.build() if model is None else model
        return sum(p.numel() for p in model.parameters())


def _pickle_refusal(p: Path) -> str:
    return (
        f"weights are a pickle checkpoint ({p.name}); unpickling can run arbitrary code, so it is refused. "
        f"Convert it to {WEIGHTS_NAME}, or pass trust_pickle=True "
        "(then it is loaded with torch.load(weights_only=True))"
    )


def _find_weights(folder: Path, config: BundleConfig, trust_pickle: bool) -> Path | None:
    if (folder / WEIGHTS_NAME).is_file():
        return folder / WEIGHTS_NAME
    safetensors = sorted(folder.glob("*.safetensors"))
    if len(safetensors) == 1:
        return safetensors[0]
    if len(safetensors) > 1:
        raise BundleError(f"several safetensors files and no {WEIGHTS_NAME}", path=str(folder))
    archive = config.architecture.get("path") if config.architecture["name"] in ARCHIVE_NAMES else None
    archive_name = Path(archive).name if archive else None
    pickles = [p for p in sorted(folder.iterdir()) if p.suffix in PICKLE_SUFFIXES and p.name != archive_name]
    if pickles:
        if not trust_pickle:
            raise BundleError(_pickle_refusal(pickles[0]), path=str(pickles[0]))
        return pickles[0]
    if archive_name:
        return None  # the archive carries its own weights
    raise BundleError(f"no {WEIGHTS_NAME} in the bundle", path=str(folder))


def _one_line(exc: Exception) -> str:
    """A YAML error as one line: the problem and where (PyYAML's own text spans several lines)."""
    problem = getattr(exc, "problem", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else str(problem)


def load_bundle(path: str | Path, *, trust_pickle: bool = False) -> Bundle:
    """Load and validate a bundle folder (or its model.yaml). Every problem is a BundleError."""
    p = Path(path)
    folder = p.parent if p.name == CONFIG_NAME or p.is_file() else p
    cfg_path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise BundleError("bundle folder not found", path=str(folder))
    if not cfg_path.is_file():
        raise BundleError(f"no {CONFIG_NAME} in the bundle folder", path=str(folder))
    try:
        data = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BundleError(f"not valid YAML: {_one_line(exc)}", path=str(cfg_path)) from exc
    config = validate_config(data, path=str(cfg_path))
    weights = _find_weights(folder, config, trust_pickle)
    if weights is not None and weights.suffix == ".safetensors":
        try:
            expected = _meta_shapes(config)
        except BundleError as exc:
            raise BundleError(f"architecture: {exc}", path=str(cfg_path)) from exc
        try:
            with safe_open(str(weights), framework="pt") as f:
                found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        except (SafetensorError, OSError) as exc:
            raise BundleError(f"unreadable safetensors file: {exc}", path=str(weights)) from exc
        if expected is not None:
            check_shapes(expected, found, str(weights))
    return Bundle(folder, config, weights, trust_pickle=trust_pickle)


_NORM_KEYS = {"zscore": ("mean", "std"), "percentile": ("lower", "upper"), "ct_window": ("center", "width")}
_NORM_KEYS["scale"] = ("factor", "offset")


class _Dumper(yaml.SafeDumper):
    """Safe dumper writing short lists of scalars inline (``[16, 32, 64]``), so model.yaml reads well."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = len(data) <= 16 and all(isinstance(v, (int, float, str)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def _yaml_data(cfg: BundleConfig) -> dict[str, Any]:
    """The config as plain data, without fields that do not apply (e.g. ct_window keys for zscore)."""
    data = cfg.model_dump(mode="json")
    norm = data["inputs"]["normalization"]
    data["inputs"]["normalization"] = {
        "kind": norm["kind"],
        **{k: norm[k] for k in _NORM_KEYS.get(norm["kind"], ())},
    }
    if data["inputs"]["band_indexes"] is None:
        del data["inputs"]["band_indexes"]
    return data


def save_bundle(
    path: str | Path,
    config: BundleConfig | Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    overwrite: bool = False,
) -> Bundle:
    """Write model.yaml + weights.safetensors into ``path``, which appears only when complete."""
    cfg = validate_config(config)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    expected = _meta_shapes(cfg)
    if expected is not None:
        check_shapes(expected, {k: tuple(v.shape) for k, v in state.items()}, str(path))
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.mkdir(parents=True)
        text = yaml.dump(_yaml_data(cfg), Dumper=_Dumper, sort_keys=False, allow_unicode=True)
        (tmp / CONFIG_NAME).write_text(text, encoding="utf-8")
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})  # one key: stable bytes
    return load_bundle(path)


def default_color(i: int) -> str:
    if i < len(PALETTE):
        return PALETTE[i]
    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.9)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def init_bundle(
    out: str | Path,
    arch: Literal["unet", "fcn"] = "unet",
    spatial_dims: int = 2,
    in_channels: int = 3,
    classes: list[str] | tuple[str, ...] = ("background", "foreground"),
    patch_size: int | list[int] | None = None,
    features: list[int] | None = None,
    overwrite: bool = False,
    *,
    name: str | None = None,
    seed: int = 0,
) -> Bundle:
    """A randomly initialised (seeded, so reproducible) bundle: for smoke tests and as a training start."""
    if arch not in ("unet", "fcn"):
        raise BundleError(f"arch must be 'unet' or 'fcn', got {arch!r}")
    if spatial_dims not in (2, 3):
        raise BundleError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if in_channels < 1 or not classes:
        raise BundleError("need in_channels >= 1 and at least one class")
    if patch_size is None:
        patch_size = 256 if spatial_dims == 2 else 96
    patch = [int(patch_size)] * spatial_dims if isinstance(patch_size, int) else [int(p) for p in patch_size]
    architecture = dict(
        name=arch, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=len(classes)
    )
    if features is not None:
        architecture["features"] = [int(f) for f in features]
    norm = {"kind": "zscore", "mean": [0.0] * in_channels, "std": [1.0] * in_channels}
    description = f"Randomly initialised {arch} (seed {seed}); untrained, its predictions are noise."
    config = validate_config(
        dict(
            name=name or Path(out).resolve().name or "bundle",
            architecture=architecture,
            spatial_dims=spatial_dims,
            inputs={"channels": [f"ch{i + 1}" for i in range(in_channels)], "normalization": norm},
            patch_size=patch,
            classes=[{"name": c, "color": default_color(i)} for i, c in enumerate(classes)],
            card={"description": description, "license": "Apache-2.0", "metrics": {}},
        )
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config.architecture)
    return save_bundle(out, config, model.state_dict(), overwrite=overwrite)
