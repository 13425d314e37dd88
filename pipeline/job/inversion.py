"""How a resampled scene's scores return to the input's grid, as a MONAI bundle's ``Invertd`` says.

Labels go back by nearest neighbour, unless the bundle interpolates its scores (``Invertd`` with
``nearest_interp`` false before ``AsDiscreted``); then the work store keeps float scores and the
outputs interpolate them, activating them there when the bundle's ``Activationsd`` comes after
``Invertd`` (the logits are interpolated, not the probabilities).
"""

from __future__ import annotations

from typing import Any


def inverts_scores(bundle: Any, scene: Any) -> bool:
    """Labels on the input's grid from its scores interpolated linearly, then the argmax (a MONAI
    bundle's ``Invertd`` before ``AsDiscreted``), rather than nearest labels: only when resampled."""
    return bundle.config.invert == "scores" and bool(getattr(scene, "resampled", False))


def inverted_activation(bundle: Any, inverted: bool) -> str:
    """The activation the outputs apply to scores once inverted onto the input's grid (a MONAI bundle's
    ``Activationsd`` after ``Invertd``), else ``none``: until then the work store keeps the logits."""
    cfg = bundle.config
    late = inverted and getattr(cfg, "activation_stage", "") == "inverted"
    return cfg.output_activation if late else "none"
