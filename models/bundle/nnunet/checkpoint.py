"""nnU-Net checkpoints without running arbitrary code: a pickle read with an allow-list of plain types.

``checkpoint_final.pth`` is a pickle (``torch.save`` of a dict: weights, optimiser state, training
log, the trainer's init arguments). Unpickling can run any code the file names, so it is read with
``torch.load(weights_only=True)``, which rebuilds only tensors, containers and the types allowed here
(numpy scalars and dtypes that nnU-Net's training log holds). A checkpoint that needs anything else
is refused unless the user passes ``--trust-pickle``; ``tilewise bundle import nnunet`` converts the
weights to safetensors once, so Dask workers never unpickle at all.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import BundleError

StateDict = dict[str, torch.Tensor]


def _allowed() -> list[Any]:
    """Plain types an nnU-Net checkpoint may hold besides tensors (numpy scalars in its log)."""
    multiarray = getattr(np, "_core", None) or np.core
    kinds = [np.dtype, multiarray.multiarray.scalar, multiarray.multiarray._reconstruct, np.ndarray]
    kinds += [type(np.dtype(t)) for t in ("f8", "f4", "f2", "i8", "i4", "i2", "u1", "b1")]
    return kinds


def refusal(path: Path, reason: str) -> str:
    return (
        f"checkpoint needs full unpickling ({reason}), which can run arbitrary code, so it is refused; "
        "pass --trust-pickle if you trust its source"
    )


def load_checkpoint(path: Path, *, trust_pickle: bool = False) -> tuple[dict[str, Any], str]:
    """The checkpoint dict, read with ``weights_only=True`` and the allow-list (fully only if trusted),
    and the sha256 of the bytes it was read from."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read: {exc.strerror or exc}", path=str(path)) from exc
    digest = hashlib.sha256(data).hexdigest()
    try:
        with torch.serialization.safe_globals(_allowed()):
            ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            reason = str(exc).split("\n")[0].removeprefix("Weights only load failed. ").strip()[:200]
            raise BundleError(
                refusal(path, reason or "types outside the allow-list"), path=str(path)
            ) from exc
        try:
            ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        except Exception as exc2:  # a trusted but broken pickle
            raise BundleError(f"not a readable checkpoint: {exc2}", path=str(path)) from exc2
    except Exception as exc:  # zip/EOF errors of a truncated or foreign file
        raise BundleError(
            f"not a readable torch checkpoint: {str(exc).splitlines()[0]}", path=str(path)
        ) from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights"), dict):
        raise BundleError("not an nnU-Net checkpoint (no 'network_weights')", path=str(path))
    weights = ckpt["network_weights"]
    if not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise BundleError("network_weights is not a state dict of tensors", path=str(path))
    return ckpt, digest


def network_weights(ckpt: dict[str, Any]) -> StateDict:
    """The network's weights, with the ``module.`` prefix of DataParallel training removed as nnU-Net does."""
    return {
        k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in ckpt["network_weights"].items()
    }
