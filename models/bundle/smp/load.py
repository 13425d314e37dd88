"""An smp ``save_pretrained`` folder or a TorchGeo task checkpoint as a :class:`Bundle`, and imported.

Both become the same thing: an ``smp.<Arch>`` architecture (built with ``encoder_weights=None``), its
weights as a state dict, and the user's description (:mod:`~.spec`). Used as it is (``--model``), the
bundle holds the weights in memory and the job saves it for Dask workers like any other kind;
imported (``tilewise bundle import smp|torchgeo``), it is written once as model.yaml +
weights.safetensors and needs neither the folder nor the checkpoint again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from models.bundle.checkpoint import read_checkpoint
from models.bundle.load import Bundle, _Contents
from models.bundle.save import config_yaml, save_bundle
from models.bundle.schema import BundleConfig
from models.bundle.shapes import check_shapes, meta_model, tensor_shapes
from models.bundle.smp import SMP_CONFIG, SMP_WEIGHTS, SPEC_NAME
from models.bundle.smp.spec import make_config, read_spec
from models.nets.smp import output_stride
from pipeline.errors import BundleError

# TorchGeo's SemanticSegmentationTask ``model`` names and the smp classes they build
TORCHGEO_MODELS = {
    "unet": "Unet",
    "deeplabv3+": "DeepLabV3Plus",
    "upernet": "UPerNet",
    "segformer": "Segformer",
    "dpt": "DPT",
}
# Lightning keeps hyper-parameters in an AttributeDict (a dict subclass): read back as a plain dict
LIGHTNING_TYPES = [
    (dict, f"{pkg}.utilities.data.AttributeDict")
    for pkg in ("lightning.fabric", "lightning_fabric", "lightning.pytorch", "pytorch_lightning")
]


class SmpBundle(Bundle):
    """An smp folder or TorchGeo checkpoint used as it is."""

    def __init__(self, kind: str, path: Path, config: BundleConfig, weights: Path, contents: _Contents):
        super().__init__(path, config, weights, contents=contents)
        self.kind = kind


def _spec(model: Path, spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """The given description, else ``tilewise.yaml`` beside the model, else none (defaults)."""
    if spec is not None:
        return dict(spec)
    sidecar = (model if model.is_dir() else model.parent) / SPEC_NAME
    return read_spec(sidecar) if sidecar.is_file() else {}


def _checked(config: BundleConfig, state: dict[str, torch.Tensor], where: Path, model: Path) -> None:
    """Weights against the architecture, and the window against the encoder's stride."""
    try:
        net = meta_model(config)
    except BundleError as exc:  # smp missing, an unknown class or encoder: name the model
        raise exc if exc.path else BundleError(str(exc), path=str(model)) from exc
    if net is None:  # a net that cannot be built on meta: shapes are checked at build
        return
    check_shapes({k: tuple(v.shape) for k, v in net.state_dict().items()}, tensor_shapes(state), str(where))
    stride = output_stride(net)
    if any(p % stride for p in config.patch_size):
        raise BundleError(
            f"patch_size {config.patch_size} is not a multiple of the encoder's output stride {stride}",
            path=str(where),
        )


def _bundle(kind: str, path: Path, config: BundleConfig, weights: Path, state: dict, data: bytes) -> Bundle:
    _checked(config, state, weights, path)
    digest = hashlib.sha256(config_yaml(config).encode("utf-8"))
    digest.update(data)
    return SmpBundle(kind, path, config, weights, _Contents(digest.hexdigest(), state, None, None))


def load_smp_folder(path: Path, *, spec: Mapping[str, Any] | None = None) -> Bundle:
    """A folder written by smp's ``save_pretrained`` (config.json + model.safetensors)."""
    cfg_path, weights = path / SMP_CONFIG, path / SMP_WEIGHTS
    try:
        conf = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BundleError(f"no {SMP_CONFIG} (smp's save_pretrained writes one)", path=str(path)) from exc
    except (OSError, ValueError) as exc:
        raise BundleError(f"not readable JSON: {exc}", path=str(cfg_path)) from exc
    if not isinstance(conf, dict) or not isinstance(conf.get("_model_class"), str):
        raise BundleError(
            "no _model_class: not a config written by segmentation-models-pytorch", path=str(cfg_path)
        )
    for key in ("in_channels", "classes"):
        if not isinstance(conf.get(key), int):
            raise BundleError(f"{key} is missing or not an integer", path=str(cfg_path))
    if not weights.is_file():
        raise BundleError(f"no {SMP_WEIGHTS} (smp's save_pretrained writes one)", path=str(path))
    data = weights.read_bytes()
    try:
        state = load_safetensors(data)
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"unreadable safetensors file: {exc}", path=str(weights)) from exc
    kwargs = {
        k: v for k, v in conf.items() if not k.startswith("_") and k not in ("classes", "encoder_weights")
    }
    arch = {"name": f"smp.{conf['_model_class']}", **kwargs, "out_channels": conf["classes"]}
    card = {"source": f"segmentation-models-pytorch save_pretrained folder {path.resolve().name}"}
    if conf.get("encoder_weights"):
        card["encoder_weights"] = f"trained from {conf['encoder_weights']} (not downloaded: the weights here)"
    config = make_config(
        arch,
        _spec(path, spec),
        name=path.resolve().name,
        where=str(cfg_path),
        card=card,
        net_activation=conf.get("activation") is not None,
    )
    return _bundle("smp", path, config, weights, state, data)


def _hyper_parameters(ckpt: Any, where: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise BundleError("not a Lightning checkpoint (no 'state_dict')", path=str(where))
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, dict) or "model" not in hp:
        raise BundleError(
            "no hyper_parameters with a 'model': not a TorchGeo task checkpoint", path=str(where)
        )
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleError("the state dict holds no 'model.' tensors", path=str(where))
    return hp, state


def load_torchgeo_checkpoint(
    path: Path, *, trust_pickle: bool = False, spec: Mapping[str, Any] | None = None
) -> Bundle:
    """A TorchGeo ``SemanticSegmentationTask`` checkpoint: architecture from its hyper-parameters."""
    ckpt, _ = read_checkpoint(path, trust_pickle=trust_pickle, allowed=LIGHTNING_TYPES)
    hp, state = _hyper_parameters(ckpt, path)
    model = str(hp["model"])
    if model not in TORCHGEO_MODELS:
        raise BundleError(
            f"TorchGeo model {model!r} is not supported; supported: {', '.join(TORCHGEO_MODELS)}",
            path=str(path),
        )
    classes = hp.get("num_classes") or hp.get("num_labels") or 1  # as TorchGeo's configure_models
    if not isinstance(hp.get("in_channels"), int) or not isinstance(classes, int):
        raise BundleError("hyper_parameters.in_channels or num_classes is not an integer", path=str(path))
    if hp.get("task", "multiclass") == "binary" or classes < 2:
        raise BundleError(
            "a binary task (one output channel) is not supported: tilewise labels are the argmax over "
            "at least two classes",
            path=str(path),
        )
    arch = {
        "name": f"smp.{TORCHGEO_MODELS[model]}",
        "encoder_name": str(hp.get("backbone", "resnet50")),
        "in_channels": hp["in_channels"],
        "out_channels": classes,
    }
    card = {
        "source": f"TorchGeo SemanticSegmentationTask checkpoint {path.name}",
        "torchgeo": {k: hp[k] for k in ("model", "backbone", "loss", "lr", "ignore_index") if k in hp},
    }
    multilabel = hp.get("task") == "multilabel"  # independent sigmoids, as TorchGeo's task trains them
    description = {"activation": "sigmoid"} if multilabel else {}
    config = make_config(
        arch, {**description, **_spec(path, spec)}, name=path.stem, where=str(path), card=card
    )
    return _bundle("torchgeo", path, config, path, state, path.read_bytes())


def import_model(source: Bundle, out: str | Path, *, overwrite: bool = False) -> Bundle:
    """Write ``source`` (from either loader) as a tilewise bundle: model.yaml + weights.safetensors."""
    state = source._state_dict()
    assert state is not None  # both loaders hold their weights
    return save_bundle(out, source.config, state, overwrite=overwrite)
