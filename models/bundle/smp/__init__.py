"""segmentation-models-pytorch folders and TorchGeo checkpoints read as tilewise bundles.

An smp model as its users keep it is the folder ``save_pretrained`` writes (``config.json`` naming the
class and its arguments, ``model.safetensors``); a TorchGeo model is a Lightning checkpoint of its
``SemanticSegmentationTask`` (``.ckpt``: hyper-parameters and a state dict whose ``model.`` tensors are an
smp network). Neither says which bands it reads, how they are scaled or what its classes are called:
the user says so once, in options or a small YAML file (:mod:`~.spec`), ``tilewise.yaml`` beside the
model when it is used as it is. :mod:`~.load` builds the :class:`~models.bundle.load.Bundle`. Detecting
looks at names only and imports nothing.
"""

from __future__ import annotations

from pathlib import Path

SMP_CONFIG = "config.json"
SMP_WEIGHTS = "model.safetensors"
CKPT_SUFFIX = ".ckpt"
SPEC_NAME = "tilewise.yaml"  # the description beside a model used as it is (--model DIR or FILE.ckpt)


def is_smp_folder(path: Path) -> bool:
    """A folder as smp's ``save_pretrained`` writes it (names only)."""
    return path.is_dir() and (path / SMP_CONFIG).is_file() and (path / SMP_WEIGHTS).is_file()


def is_lightning_checkpoint(path: Path) -> bool:
    return path.is_file() and path.suffix == CKPT_SUFFIX
