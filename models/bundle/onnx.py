"""ONNX models: an ``.onnx`` file given as ``--model``, and any bundle written out as ONNX.

``export_onnx`` writes the bundle's net with ``torch.onnx.export`` and embeds the bundle's
``model.yaml`` (channels, normalisation, patch, classes, ...) in the file's ``metadata_props``, so the
one file is a complete model: ``--model net.onnx`` reads it back. A foreign ONNX file without that
metadata is described from its static shapes: channels and classes from the input and output, patch
from fixed spatial dimensions (with dynamic ones, wrap it in a bundle whose ``model.yaml`` says
``architecture: {name: onnx, path: net.onnx}``). The metadata is appended as raw protobuf fields, so
writing it needs no ``onnx`` package at run time.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from models.bundle.header import load_yaml
from models.bundle.load import Bundle, _Contents
from models.bundle.save import config_yaml
from models.bundle.schema import BundleConfig, default_color, validate_config
from models.nets.registry import set_eval
from pipeline.atomic import atomic_path
from pipeline.errors import BundleError, OutputError

METADATA_KEY = "tilewise.model_yaml"
OPSET = 17


class OnnxFileBundle(Bundle):
    """A bundle that is one ``.onnx`` file: the file is its archive and its path."""

    kind = "onnx"
    _opened: Any = None  # the net opened to read the file's metadata, for the first build to reuse

    @property
    def archive(self) -> Path | None:
        return self.path

    def build(self, device: str | torch.device = "cpu") -> Any:
        """The first build takes the session ``load_onnx_file`` already opened (opening one took
        0.05-0.2 s here); later builds open their own."""
        net, self._opened = self._opened, None
        if net is None:
            return super().build(device)
        return set_eval(net.to(device))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_opened": None}  # a session does not pickle


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def with_metadata(model: bytes, key: str, value: str) -> bytes:
    """``model`` (a serialised ModelProto) with one more ``metadata_props`` entry (field 14)."""
    entry = _field(1, key.encode()) + _field(2, value.encode())
    return model + _field(14, entry)


def export_onnx(
    bundle: Bundle, out: str | Path, *, batch: int | None = None, overwrite: bool = False
) -> Path:
    """Write ``bundle`` as one ONNX file (dynamic batch unless ``batch`` fixes it), its config embedded."""
    cfg = bundle.config
    model = bundle.build("cpu")
    example = torch.zeros((batch or 2, len(cfg.inputs.channels), *cfg.patch_size))
    buf = io.BytesIO()
    dynamic = None if batch else {"input": {0: "batch"}, "scores": {0: "batch"}}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter warns that it is deprecated
            torch.onnx.export(
                model,
                (example,),
                buf,
                dynamo=False,
                input_names=["input"],
                output_names=["scores"],
                dynamic_axes=dynamic,
                opset_version=OPSET,
            )
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"cannot export to ONNX: {reason}", path=str(bundle.path)) from exc
    p = Path(out)
    arch = {
        "name": "onnx",
        "path": p.name,
        "in_channels": len(cfg.inputs.channels),
        "out_channels": len(cfg.classes),
        "spatial_dims": cfg.spatial_dims,
    }
    embedded = cfg.model_copy(update={"architecture": arch})
    data = with_metadata(buf.getvalue(), METADATA_KEY, config_yaml(embedded))
    if p.exists() and not overwrite:
        raise OutputError("exists; pass --overwrite to replace it", path=str(p))
    with atomic_path(p, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return p


def _describe(session: Any, p: Path) -> BundleConfig:
    """A config for a foreign ONNX file, from its static shapes."""
    shape_in, shape_out = session.get_inputs()[0].shape, session.get_outputs()[0].shape
    dims = len(shape_in) - 2
    if dims not in (2, 3) or len(shape_out) != len(shape_in):
        raise BundleError(f"input {shape_in} / output {shape_out} are not (B, C, H, W[, D])", path=str(p))
    static = [d if isinstance(d, int) and d > 0 else None for d in shape_in[1:]]
    n_out = shape_out[1] if isinstance(shape_out[1], int) else None
    if None in static or n_out is None:
        raise BundleError(
            "channels, classes or spatial size are dynamic and the file carries no tilewise config; "
            "wrap it in a bundle folder whose model.yaml says architecture: {name: onnx, path: "
            f"{p.name}}}, or export it with tilewise bundle export",
            path=str(p),
        )
    n_in = static[0]
    return validate_config(
        {
            "name": p.stem,
            "architecture": {
                "name": "onnx",
                "path": p.name,
                "in_channels": n_in,
                "out_channels": n_out,
                "spatial_dims": dims,
            },
            "spatial_dims": dims,
            "inputs": {"channels": [f"ch{i + 1}" for i in range(n_in)]},
            "patch_size": static[1:],
            "output_activation": "softmax",
            "classes": [{"name": f"class_{i}", "color": default_color(i)} for i in range(n_out)],
            "card": {"source": "onnx file, described from its shapes: no normalisation, softmax"},
        },
        path=str(p),
    )


def load_onnx_file(p: Path, *, trust_pickle: bool = False) -> OnnxFileBundle:
    """An ``.onnx`` file as a bundle (its embedded tilewise config, else its shapes)."""
    from models.nets.onnx import OnnxNet

    try:
        data = p.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read: {exc.strerror or exc}", path=str(p)) from exc
    net = OnnxNet(data, where=str(p))
    meta = net.session.get_modelmeta().custom_metadata_map
    if METADATA_KEY in meta:
        try:
            config = validate_config(load_yaml(meta[METADATA_KEY]), path=str(p))
        except yaml.YAMLError as exc:
            raise BundleError(f"embedded {METADATA_KEY} is not valid YAML", path=str(p)) from exc
        config = config.model_copy(update={"architecture": {**config.architecture, "path": p.name}})
    else:
        config = _describe(net.session, p)
    net.check(len(config.inputs.channels), len(config.classes), config.spatial_dims)
    contents = _Contents(hashlib.sha256(data).hexdigest(), None, None, data)
    bundle = OnnxFileBundle(p, config, None, trust_pickle=trust_pickle, contents=contents)
    bundle._opened = net
    return bundle
