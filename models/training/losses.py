"""Dice + cross-entropy that ignores unlabelled pixels.

Real ground truth is partial (OSM covers a third of the S2 clip), so unlabelled pixels must contribute
nothing: neither to the cross-entropy (``ignore_index``) nor to the Dice sums (masked out of both the
intersection and the denominators). MONAI's DiceLoss has no ignore value, hence the small Dice here.
Dice is pooled over the whole batch ("batch Dice"), which is steadier than per-patch Dice when a class
appears in few patches, and averaged over the classes present in the batch: CE handles the rest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def masked_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, smooth: float = 1e-5
) -> torch.Tensor:
    """``1 - mean Dice`` over classes present in ``target``; ``target`` is ``(B, *spatial)`` int."""
    k = logits.shape[1]
    valid = target != ignore_index
    probs = torch.softmax(logits.float(), dim=1) * valid.unsqueeze(1)
    safe = torch.where(valid, target, torch.zeros_like(target))
    onehot = F.one_hot(safe.long(), k).movedim(-1, 1).to(probs.dtype) * valid.unsqueeze(1)
    dims = (0, *range(2, logits.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    present = onehot.sum(dims) > 0
    if not bool(present.any()):
        return logits.sum() * 0.0  # nothing labelled: no signal, but keep the graph
    return 1.0 - dice[present].mean()


class DiceCELoss(nn.Module):
    """``ce_weight * CE + dice_weight * Dice``, both blind to ``ignore_index`` pixels."""

    def __init__(self, ignore_index: int = 255, ce_weight: float = 1.0, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.long()
        if bool((target != self.ignore_index).any()):
            ce = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index)
        else:
            ce = logits.sum() * 0.0  # cross_entropy gives NaN when every pixel is ignored
        dice = masked_dice_loss(logits, target, self.ignore_index)
        return self.ce_weight * ce + self.dice_weight * dice
