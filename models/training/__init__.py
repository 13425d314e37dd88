"""Train a 2-D/3-D U-Net or FCN bundle from image/label scenes, read and normalised as inference does.

:mod:`~models.training.config` holds a run's settings and drafts the bundle config,
:mod:`~models.training.data` reads and normalises the scenes, :mod:`~models.training.sampling` draws
class-balanced patches, :mod:`~models.training.losses` scores them, :mod:`~models.training.loop` trains
and validates through the block engine, and :mod:`~models.training.card` records the result in the
bundle. This layer sits above the job layer: it evaluates through the same tiled pipeline a run uses.
"""

from models.training.card import model_card, update_card
from models.training.config import TrainConfig, TrainResult
from models.training.data import labels_from_probability_maps, load_pairs, prepare_scenes
from models.training.loop import train, validate_model

__all__ = [
    "TrainConfig",
    "TrainResult",
    "labels_from_probability_maps",
    "load_pairs",
    "model_card",
    "prepare_scenes",
    "train",
    "update_card",
    "validate_model",
]
