"""Model bundles: ``DIR/model.yaml`` + ``DIR/weights.safetensors``, everything needed to use a net right.

:mod:`~models.bundle.schema` is the content of model.yaml, :mod:`~models.bundle.load` reads a bundle
folder once and builds nets from what it read, :mod:`~models.bundle.save` writes one, and
:mod:`~models.bundle.shapes` checks weights against the architecture for both. See docs/contracts.md
for the file format.
"""

from __future__ import annotations

import importlib
from typing import Any

# Lazy re-exports (PEP 562): ``load`` and ``save`` import torch, which takes seconds; ``tilewise plan``
# reads only the config (``models.bundle.header``) and never pays for it.
_HOME = {
    "PICKLE_SUFFIXES": "load",
    "Bundle": "load",
    "load_archive": "load",
    "load_bundle": "load",
    "init_bundle": "save",
    "save_bundle": "save",
    "CONFIG_NAME": "schema",
    "PALETTE": "schema",
    "WEIGHTS_NAME": "schema",
    "BundleConfig": "schema",
    "ClassSpec": "schema",
    "Inputs": "schema",
    "Normalization": "schema",
    "default_color": "schema",
    "validate_config": "schema",
    "check_shapes": "shapes",
    "BundleHeader": "header",
    "read_header": "header",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"models.bundle.{_HOME[name]}"), name)
    raise AttributeError(f"module 'models.bundle' has no attribute {name!r}")
