"""Models as their users keep them: each kind recognises its own folder or file and loads it as a Bundle.

Users arrive with a tilewise bundle, an nnU-Net results folder, a MONAI bundle, an ONNX file, ... and
``--model`` should take any of them as it is. Every kind is one :class:`ModelSource`: a cheap
``detect`` that only looks at names on disk, and a ``load`` that returns a :class:`Bundle` (importing
its framework lazily, so detecting never costs an import). The first kind that detects a path wins,
so the most specific kinds come first. Kind-specific options (nnU-Net folds, ...) pass through
``options``; a kind that does not know an option refuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import BundleError

if TYPE_CHECKING:
    from models.bundle.load import Bundle

CONFIG_NAME = "model.yaml"  # the same name as schema.CONFIG_NAME, without importing pydantic to detect


@dataclass(frozen=True)
class ModelSource:
    kind: str
    detect: Callable[[Path], bool]
    load: Callable[..., Bundle]  # load(path, *, trust_pickle: bool, options: Mapping[str, Any])
    describe: str  # what the path looks like, for the error that lists what is accepted


def _is_tilewise(p: Path) -> bool:
    return (p.is_dir() and (p / CONFIG_NAME).is_file()) or p.name == CONFIG_NAME


def _load_tilewise(path: Path, *, trust_pickle: bool, options: Mapping[str, Any]) -> Bundle:
    from models.bundle.load import load_bundle

    refuse_options("tilewise bundle", options, path)
    return load_bundle(path, trust_pickle=trust_pickle)


def _is_monai(p: Path) -> bool:
    from models.bundle.monai_bundle import is_monai_bundle  # names only: imports no framework

    return is_monai_bundle(p)


def _load_monai(path: Path, *, trust_pickle: bool, options: Mapping[str, Any]) -> Bundle:
    from models.bundle.monai_bundle.load import load_monai_bundle

    trust_code = bool(options.get("trust_code"))
    refuse_options("MONAI bundle", {k: v for k, v in options.items() if k != "trust_code"}, path)
    return load_monai_bundle(path, trust_pickle=trust_pickle, trust_code=trust_code)


def _is_onnx(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() == ".onnx"


def _load_onnx(path: Path, *, trust_pickle: bool, options: Mapping[str, Any]) -> Bundle:
    from models.bundle.onnx import load_onnx_file

    refuse_options("ONNX model", options, path)
    return load_onnx_file(path, trust_pickle=trust_pickle)


SOURCES: list[ModelSource] = [
    ModelSource("tilewise", _is_tilewise, _load_tilewise, "a tilewise bundle folder with model.yaml"),
    ModelSource(
        "monai",
        _is_monai,
        _load_monai,
        "a MONAI bundle folder (configs/metadata.json, configs/inference.json)",
    ),
    ModelSource("onnx", _is_onnx, _load_onnx, "an .onnx file"),
]


def register(source: ModelSource, *, first: bool = False) -> None:
    """Add a kind; ``first`` puts it ahead of the others (for a kind whose folders others might match)."""
    SOURCES[:] = [s for s in SOURCES if s.kind != source.kind]
    SOURCES.insert(0, source) if first else SOURCES.append(source)


def refuse_options(kind: str, options: Mapping[str, Any], path: Path) -> None:
    """A kind that takes no options says so, rather than silently ignoring e.g. ``--folds``."""
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
        raise BundleError(f"{', '.join(given)} do not apply to a {kind}", path=str(path))


def model_kind(path: str | Path) -> str:
    """The kind of model at ``path``, or :class:`BundleError` listing what is accepted."""
    p = Path(path)
    if not p.exists():
        raise BundleError("model not found", path=str(p))
    for source in SOURCES:
        if source.detect(p):
            return source.kind
    accepted = "; ".join(s.describe for s in SOURCES)
    found = f"no {CONFIG_NAME} in the folder" if p.is_dir() else "not a model file"
    raise BundleError(f"{found}, and not a model tilewise knows; expected {accepted}", path=str(p))


def open_model(
    path: str | Path, *, trust_pickle: bool = False, options: Mapping[str, Any] | None = None
) -> Bundle:
    """Load whatever model ``path`` holds as a :class:`Bundle`; every problem is a BundleError."""
    p = Path(path)
    kind = model_kind(p)
    source = next(s for s in SOURCES if s.kind == kind)
    return source.load(p, trust_pickle=trust_pickle, options=dict(options or {}))


def _is_nnunet(p: Path) -> bool:
    from models.bundle.nnunet.folder import looks_like_nnunet  # standard library only: cheap

    return looks_like_nnunet(p)


def _load_nnunet(path: Path, *, trust_pickle: bool, options: Mapping[str, Any]) -> Bundle:
    from models.bundle.nnunet import load_nnunet

    return load_nnunet(path, trust_pickle=trust_pickle, options=options)


register(
    ModelSource(
        "nnunet",
        _is_nnunet,
        _load_nnunet,
        "an nnU-Net v2 trained-model folder (dataset.json, plans.json, fold_N/checkpoint_final.pth)",
    )
)


def _is_smp(p: Path) -> bool:
    from models.bundle.smp import is_smp_folder  # names only: imports no framework

    return is_smp_folder(p)


def _load_smp(path: Path, *, trust_pickle: bool, options: Mapping[str, Any]) -> Bundle:
    from models.bundle.smp.load import load_smp_folder

    refuse_options("segmentation-models-pytorch folder", options, path)
    return load_smp_folder(path)


def _is_torchgeo(p: Path) -> bool:
    from models.bundle.smp import is_lightning_checkpoint

    return is_lightning_checkpoint(p)


def _load_torchgeo(path: Path, *, trust_pickle: bool, options: Mapping[str, Any]) -> Bundle:
    from models.bundle.smp.load import load_torchgeo_checkpoint

    refuse_options("TorchGeo checkpoint", options, path)
    return load_torchgeo_checkpoint(path, trust_pickle=trust_pickle)


register(
    ModelSource(
        "smp",
        _is_smp,
        _load_smp,
        "a segmentation-models-pytorch save_pretrained folder (config.json, model.safetensors)",
    )
)
register(ModelSource("torchgeo", _is_torchgeo, _load_torchgeo, "a TorchGeo SemanticSegmentationTask .ckpt"))
