"""Pickle checkpoints (``torch.save``, Lightning ``.ckpt``) read without running arbitrary code.

Unpickling can run any code the file names, so a checkpoint is read with
``torch.load(weights_only=True)``, which rebuilds only tensors, containers and the types a caller
allows (numpy scalars in nnU-Net's log, Lightning's ``AttributeDict`` of hyper-parameters). A
checkpoint that needs anything else is refused, naming the file, unless the user passes
``--trust-pickle``. The importers convert the weights to safetensors once, so Dask workers never
unpickle at all.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import BundleError


def numpy_types() -> list[Any]:
    """Plain numpy types a training log holds (scalars, dtypes, small arrays)."""
    multiarray = getattr(np, "_core", None) or np.core
    kinds = [np.dtype, multiarray.multiarray.scalar, multiarray.multiarray._reconstruct, np.ndarray]
    kinds += [type(np.dtype(t)) for t in ("f8", "f4", "f2", "i8", "i4", "i2", "u1", "b1")]
    return kinds


def refusal(path: Path, reason: str) -> str:
    return (
        f"checkpoint needs full unpickling ({reason}), which can run arbitrary code, so it is refused; "
        "pass --trust-pickle if you trust its source"
    )


def read_checkpoint(
    path: Path, *, trust_pickle: bool = False, allowed: Sequence[Any] = ()
) -> tuple[Any, str]:
    """The unpickled checkpoint, read with ``weights_only=True`` and ``allowed`` (fully only if
    trusted), and the sha256 of the bytes it was read from."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read: {exc.strerror or exc}", path=str(path)) from exc
    digest = hashlib.sha256(data).hexdigest()
    try:
        with torch.serialization.safe_globals(list(allowed)):
            ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            reason = str(exc).split("\n")[0].removeprefix("Weights only load failed. ").strip()[:200]
            raise BundleError(
                refusal(path, reason or "types outside the allow-list"), path=str(path)
            ) from exc
        try:
            ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        except Exception as exc2:  # a trusted but broken pickle, or one naming a module not installed
            first = (str(exc2).strip().splitlines() or [type(exc2).__name__])[0]
            raise BundleError(f"not a readable checkpoint: {first}", path=str(path)) from exc2
    except Exception as exc:  # zip/EOF errors of a truncated or foreign file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"not a readable torch checkpoint: {first}", path=str(path)) from exc
    return ckpt, digest
