"""MONAI bundles (the model zoo's folder layout) read as tilewise bundles, without running their code.

``configs/metadata.json`` gives the classes and channels, ``configs/inference.json`` (or ``.yaml``) the
network (``network_def``), the preprocessing, the sliding-window inferer and the postprocessing, and
``models/model.pt`` (a state dict) or ``models/model.ts`` (TorchScript) the weights.
:mod:`~.config` reads the subtrees we need with MONAI's ``ConfigParser`` and no expression evaluation,
:mod:`~.transforms` maps the transforms onto a :class:`~models.bundle.schema.BundleConfig`, and
:mod:`~.load` assembles the :class:`~models.bundle.load.Bundle`. ``monai`` is imported only in ``load``.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = "configs"
METADATA = "metadata.json"
INFERENCE_NAMES = ("inference.json", "inference.yaml", "inference.yml")


def inference_config(folder: Path) -> Path | None:
    """The bundle's inference config, or None."""
    for name in INFERENCE_NAMES:
        if (folder / CONFIG_DIR / name).is_file():
            return folder / CONFIG_DIR / name
    return None


def is_monai_bundle(path: Path) -> bool:
    """A folder with configs/metadata.json and an inference config (names only: cheap, imports nothing)."""
    return path.is_dir() and (path / CONFIG_DIR / METADATA).is_file() and inference_config(path) is not None
