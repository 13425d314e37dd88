"""Read a bundle folder once, validate all of it, and hand out ready-to-run nets.

:func:`load_bundle` is the one place a bundle folder is read: ``model.yaml`` (safe YAML loader), the
weights and any archive are read into memory in one go, and the hash, the shape checks and every later
``Bundle.build()`` come from those same bytes. So a bad bundle fails before any scene is read, building
a net on each worker costs no disk access, and the hash names exactly the weights that ran.

Weights are safetensors. Pickle checkpoints (``torch.save``) can run arbitrary code when unpickled, so
they are refused unless the caller passes ``trust_pickle=True``, and even then they go through
``torch.load(weights_only=True)``. TorchScript and ``torch.export`` (``.pt2``) archives store a graph
plus tensors and loading them reconstructs TorchScript/FX objects only, never arbitrary Python
classes, so they are accepted as self-contained models. So are ONNX files (architecture ``onnx``),
run by ONNX Runtime (:mod:`models.nets.onnx`).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from models.bundle.header import read_config
from models.bundle.schema import CONFIG_NAME, WEIGHTS_NAME, BundleConfig
from models.bundle.shapes import check_shapes, meta_model, meta_shapes, tensor_shapes
from models.nets.registry import ARCHIVE_NAMES, build_model, set_eval
from pipeline.errors import BundleError

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class _Contents:
    """What was read from the folder; a Bundle needs nothing else from disk."""

    hash: str
    state: StateDict | None  # safetensors weights, decoded
    pickled: bytes | None  # a trusted pickle checkpoint, decoded (weights_only) at each build
    archive: bytes | None


class Bundle:
    """A loaded, validated bundle. ``build()`` gives the ready-to-run net."""

    def __init__(
        self,
        path: Path,
        config: BundleConfig,
        weights: Path | None,
        *,
        trust_pickle: bool = False,
        contents: _Contents | None = None,
    ):
        self.path = path
        self.config = config
        self.weights = weights
        self.trust_pickle = trust_pickle
        if contents is None:
            contents = _read_contents((path / CONFIG_NAME).read_bytes(), weights, self.archive)
        self._contents = contents

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
        return archive_path(self.path, self.config)

    @property
    def hash(self) -> str:
        """sha256 (hex) over model.yaml, then the weights file, then any archive: identifies results."""
        return self._contents.hash

    def _state_dict(self) -> StateDict | None:
        if self._contents.state is not None:
            return self._contents.state
        if self._contents.pickled is None or self.weights is None:
            return None
        if not self.trust_pickle:
            raise BundleError(pickle_refusal(self.weights), path=str(self.weights))
        return _unpickle(self._contents.pickled, self.weights)

    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        """The net with its weights loaded, on ``device``, in eval mode."""
        archive = self.archive
        if archive is not None and self._contents.archive is not None:
            model = load_archive(archive, self._contents.archive)
        else:
            model = build_model(self.config.architecture)
        state = self._state_dict()
        if state is not None:
            expected = tensor_shapes(model.state_dict())
            check_shapes(expected, tensor_shapes(state), str(self.weights))
            model.load_state_dict(state, strict=True)
        elif archive is None:
            raise BundleError(f"no {WEIGHTS_NAME} in the bundle", path=str(self.path))
        return set_eval(model.to(device))

    def param_count(self) -> int:
        """Number of parameters, counted on the meta device so nothing is allocated."""
        model = meta_model(self.config)
        model = self.build() if model is None else model
        return sum(p.numel() for p in model.parameters())


def pickle_refusal(p: Path) -> str:
    return (
        f"weights are a pickle checkpoint ({p.name}); unpickling can run arbitrary code, so it is refused. "
        f"Convert it to {WEIGHTS_NAME}, or pass trust_pickle=True "
        "(then it is loaded with torch.load(weights_only=True))"
    )


def _unpickle(data: bytes, where: Path) -> StateDict:
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BundleError(f"cannot load weights (weights_only=True): {exc}", path=str(where)) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleError("checkpoint is not a state dict of tensors", path=str(where))
    return state


def _read(p: Path | None) -> bytes | None:
    if p is None:
        return None
    try:
        return p.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read: {exc.strerror or exc}", path=str(p)) from exc


def _read_contents(config: bytes, weights: Path | None, archive: Path | None) -> _Contents:
    data, archive_data = _read(weights), _read(archive)
    h = hashlib.sha256(config)
    for blob in (data, archive_data):
        if blob is not None:
            h.update(blob)
    state = None
    if weights is not None and data is not None and weights.suffix == ".safetensors":
        try:
            state = load_safetensors(data)
        except (SafetensorError, OSError) as exc:
            raise BundleError(f"unreadable safetensors file: {exc}", path=str(weights)) from exc
    pickled = data if state is None else None
    return _Contents(h.hexdigest(), state, pickled, archive_data)


def load_archive(path: str | Path, data: bytes | None = None) -> nn.Module:
    """A TorchScript file, a ``torch.export`` ``.pt2`` or an ``.onnx`` archive as a CPU module in eval mode.

    Dispatch is by suffix (``.pt2`` is export, ``.onnx`` ONNX, anything else TorchScript), so no file is
    ever tried with a loader it was not written for. ``data`` is the file's bytes when already read.
    TorchScript is deprecated upstream: prefer ``.pt2``.
    """
    p = Path(path)
    if data is None:
        if not p.is_file():
            raise BundleError("model archive not found", path=str(p))
        data = p.read_bytes()
    if p.suffix == ".onnx":
        from models.nets.onnx import OnnxNet

        return set_eval(OnnxNet(data, where=str(p)))
    try:
        if p.suffix == ".pt2":
            module: nn.Module = torch.export.load(io.BytesIO(data)).module()
        else:
            with warnings.catch_warnings():  # TorchScript is deprecated upstream; still fine to load
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as exc:  # loaders raise RuntimeError, ValueError, zip errors, ...
        kind = "torch.export" if p.suffix == ".pt2" else "TorchScript"
        raise BundleError(f"not a readable {kind} archive: {exc}", path=str(p)) from exc
    return set_eval(module)


def archive_path(folder: Path, config: BundleConfig) -> Path | None:
    """The archive file an archive architecture names (relative to the bundle folder), else None."""
    arch = config.architecture
    if arch["name"] not in ARCHIVE_NAMES or "path" not in arch:
        return None
    p = Path(arch["path"])
    return p if p.is_absolute() else folder / p


def _check_archive(folder: Path, config: BundleConfig, where: str) -> Path | None:
    name = config.architecture["name"]
    if name not in ARCHIVE_NAMES:
        return None
    path = archive_path(folder, config)
    if path is None:
        raise BundleError(f"architecture {name!r} needs a 'path' to the archive", path=where)
    if name == "export" and path.suffix != ".pt2":
        raise BundleError("an 'export' archive must have the .pt2 suffix", path=str(path))
    if name == "onnx" and path.suffix != ".onnx":
        raise BundleError("an 'onnx' archive must have the .onnx suffix", path=str(path))
    if not path.is_file():
        raise BundleError("model archive not found", path=str(path))
    return path


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
            raise BundleError(pickle_refusal(pickles[0]), path=str(pickles[0]))
        return pickles[0]
    if archive_name:
        return None  # the archive carries its own weights
    raise BundleError(f"no {WEIGHTS_NAME} in the bundle", path=str(folder))


def load_bundle(path: str | Path, *, trust_pickle: bool = False) -> Bundle:
    """Load and validate a bundle folder (or its model.yaml). Every problem is a BundleError."""
    folder, raw, config = read_config(path)
    cfg_path = folder / CONFIG_NAME
    weights = _find_weights(folder, config, trust_pickle)
    archive = _check_archive(folder, config, str(cfg_path))
    expected = None
    if weights is not None and weights.suffix == ".safetensors":
        try:
            expected = meta_shapes(config)
        except BundleError as exc:
            raise BundleError(f"architecture: {exc}", path=str(cfg_path)) from exc
    contents = _read_contents(raw, weights, archive)
    if archive is not None and archive.suffix == ".onnx" and contents.archive is not None:
        from models.nets.onnx import OnnxNet

        arch = config.architecture
        net = OnnxNet(contents.archive, where=str(archive))
        net.check(arch["in_channels"], arch["out_channels"], config.spatial_dims)
    if expected is not None and contents.state is not None:
        check_shapes(expected, tensor_shapes(contents.state), str(weights))
    return Bundle(folder, config, weights, trust_pickle=trust_pickle, contents=contents)
