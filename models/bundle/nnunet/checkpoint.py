"""nnU-Net checkpoints without running arbitrary code: a pickle read with an allow-list of plain types.

``checkpoint_final.pth`` is a pickle (``torch.save`` of a dict: weights, optimiser state, training
log, the trainer's init arguments). Unpickling can run any code the file names, so it is read with
``torch.load(weights_only=True)`` (:mod:`models.bundle.checkpoint`), which rebuilds only tensors,
containers and the types allowed here (numpy scalars and dtypes that nnU-Net's training log holds).
A checkpoint that needs anything else is refused unless the user passes ``--trust-pickle``;
``tilewise bundle import nnunet`` converts the weights to safetensors once, so Dask workers never
unpickle at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.bundle.checkpoint import numpy_types, read_checkpoint
from pipeline.errors import BundleError

StateDict = dict[str, torch.Tensor]


def load_checkpoint(path: Path, *, trust_pickle: bool = False) -> tuple[dict[str, Any], str]:
    """The checkpoint dict, read with ``weights_only=True`` and the allow-list (fully only if trusted),
    and the sha256 of the bytes it was read from."""
    ckpt, digest = read_checkpoint(path, trust_pickle=trust_pickle, allowed=numpy_types())
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
