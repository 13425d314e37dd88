"""Model bundles: ``DIR/model.yaml`` + ``DIR/weights.safetensors``, everything needed to use a net right.

:mod:`~models.bundle.schema` is the content of model.yaml, :mod:`~models.bundle.load` reads a bundle
folder once and builds nets from what it read, :mod:`~models.bundle.save` writes one, and
:mod:`~models.bundle.shapes` checks weights against the architecture for both. See docs/contracts.md
for the file format.
"""

from models.bundle.load import PICKLE_SUFFIXES, Bundle, load_archive, load_bundle
from models.bundle.save import init_bundle, save_bundle
from models.bundle.schema import (
    CONFIG_NAME,
    PALETTE,
    WEIGHTS_NAME,
    BundleConfig,
    ClassSpec,
    Inputs,
    Normalization,
    default_color,
    validate_config,
)
from models.bundle.shapes import check_shapes

__all__ = [
    "CONFIG_NAME",
    "PALETTE",
    "PICKLE_SUFFIXES",
    "WEIGHTS_NAME",
    "Bundle",
    "BundleConfig",
    "ClassSpec",
    "Inputs",
    "Normalization",
    "check_shapes",
    "default_color",
    "init_bundle",
    "load_archive",
    "load_bundle",
    "save_bundle",
    "validate_config",
]
