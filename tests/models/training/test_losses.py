"""Dice + CE: real values at the extremes, and unlabelled pixels contribute nothing."""

from __future__ import annotations

import math

import torch

from models.training.losses import DiceCELoss, masked_dice_loss
from pipeline.job.evaluate import IGNORE


def _logits_for(target: torch.Tensor, k: int, scale: float = 50.0) -> torch.Tensor:
    """Logits that put (almost) all probability on ``target``."""
    return torch.nn.functional.one_hot(target, k).movedim(-1, 1).float() * scale


def test_dice_of_a_perfect_prediction_is_zero_and_of_a_disjoint_one_is_one():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:6, 2:6] = 1
    perfect = _logits_for(target, 2)
    assert float(masked_dice_loss(perfect, target, IGNORE)) < 1e-6
    disjoint = _logits_for(1 - target, 2)
    assert abs(float(masked_dice_loss(disjoint, target, IGNORE)) - 1.0) < 1e-6
    assert float(DiceCELoss(ignore_index=IGNORE)(perfect, target)) < 1e-6


def test_uniform_prediction_has_the_textbook_values():
    target = torch.tensor([[[0, 0, 1, 1]]])  # (B, H, W): half and half
    logits = torch.zeros(1, 2, 1, 4)  # p = 0.5 everywhere
    # Dice per class = 2 * (0.5 * 2) / (0.5 * 4 + 2) = 0.5; CE = ln 2
    assert math.isclose(float(masked_dice_loss(logits, target, IGNORE)), 0.5, abs_tol=1e-5)
    loss = DiceCELoss(ignore_index=IGNORE, ce_weight=2.0, dice_weight=0.5)
    assert math.isclose(float(loss(logits, target)), 2.0 * math.log(2) + 0.5 * 0.5, abs_tol=1e-5)


def test_dice_averages_only_the_classes_present():
    target = torch.zeros(1, 4, 4, dtype=torch.long)  # class 1 and 2 absent
    perfect = _logits_for(target, 3)
    assert float(masked_dice_loss(perfect, target, IGNORE)) < 1e-6


def test_ignored_pixels_do_not_contribute_to_the_loss():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, generator=gen, requires_grad=True)
    target = torch.randint(0, 3, (2, 16, 16), generator=gen)
    target[:, :, :8] = IGNORE
    loss = DiceCELoss(ignore_index=IGNORE)
    base = loss(logits, target)
    base.backward()
    assert logits.grad is not None and torch.all(logits.grad[:, :, :, :8] == 0)
    changed = logits.detach().clone()
    changed[:, :, :, :8] = torch.randn(2, 3, 16, 8, generator=gen) * 50
    assert torch.allclose(loss(changed, target), base.detach())
    everything_ignored = torch.full_like(target, IGNORE)
    assert float(loss(logits, everything_ignored).detach()) == 0.0
    assert float(masked_dice_loss(logits, everything_ignored, IGNORE).detach()) == 0.0
