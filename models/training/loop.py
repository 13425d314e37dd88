"""The training loop: class-balanced patches, Dice + CE, cosine schedule, best epoch on held-out data.

Validation is spatial (a held-out box, never random pixels, which would leak through spatial
autocorrelation) and runs the block engine (``infer_array``) over the held-out crop, so the score a
bundle reports is the score of the tiled pipeline that will run it, seams and blending included.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from models.bundle import save_bundle
from models.nets.registry import build_model
from models.training.card import model_card
from models.training.config import TrainConfig, TrainResult, base_config
from models.training.data import prepare_scenes
from models.training.losses import DiceCELoss
from models.training.sampling import Augment, PatchSampler, TrainScene, make_batch
from pipeline.core.box import Box
from pipeline.engine.arrays import infer_array
from pipeline.engine.predictor import Predictor, resolve_device
from pipeline.errors import ConfigError
from pipeline.job.evaluate import IGNORE, confusion, scores


def validate_model(
    model: torch.nn.Module,
    scenes: Sequence[TrainScene],
    patch: Sequence[int],
    num_classes: int,
    *,
    device: str | torch.device = "cpu",
    overlap: float = 0.25,
    batch_size: int = 4,
) -> np.ndarray:
    """Confusion matrix on the held-out boxes, predicted by the block engine over each box plus a
    half-patch margin of context (what a full-scene run would see near the box, minus far context)."""
    predictor = Predictor(model, device=device, activation="softmax")
    total = np.zeros((num_classes, num_classes + 1), np.int64)
    for scene in scenes:
        if scene.val_box is None:
            continue
        margin = [p // 2 for p in patch]
        whole = Box.from_shape(scene.spatial_shape)
        crop = Box(
            tuple(a - m for a, m in zip(scene.val_box.start, margin, strict=True)),
            tuple(b + m for b, m in zip(scene.val_box.stop, margin, strict=True)),
        ).intersect(whole)
        image = scene.image[(slice(None), *crop.slices())]
        roi = [min(p, n) for p, n in zip(patch, crop.shape, strict=True)]
        probs = infer_array(image, predictor, patch_size=roi, overlap=overlap, batch_size=batch_size)
        pred = np.argmax(probs, axis=0).astype(np.uint8)
        inner = scene.val_box.slices(crop.start)
        total += confusion(pred[inner], scene.labels[scene.val_box.slices()], num_classes)
    return total


def _ema_fn(decay: float) -> Any:
    """EMA update with the usual warm-up, decay ``min(decay, (1 + n) / (10 + n))``: early averages
    follow the weights closely instead of clinging to the random start (short runs stay meaningful)."""

    def update(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return averaged * d + current * (1.0 - d)

    return update


def _mean_dice(per_class: dict[str, dict[str, float]]) -> float:
    values = [v["dice"] for v in per_class.values() if v["support"] > 0 and math.isfinite(v["dice"])]
    return float(np.mean(values)) if values else float("nan")


def _progress(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]train[/] epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  val {task.fields[val]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def train(cfg: TrainConfig) -> TrainResult:
    """Train, validate each epoch on the held-out region, keep the best weights, write the bundle."""
    t0 = time.perf_counter()
    if cfg.epochs < 1 or cfg.steps_per_epoch < 1 or cfg.batch_size < 1:
        raise ConfigError("epochs, steps per epoch and batch size must be >= 1")
    if Path(cfg.out).exists() and not cfg.overwrite:
        raise ConfigError("output bundle exists; pass --overwrite to replace it", path=str(cfg.out))
    base, init_weights = base_config(cfg)
    num_classes = len(base["classes"])
    config, scenes = prepare_scenes(cfg, base)
    names = [c["name"] for c in config["classes"]]
    patch = config["patch_size"]
    sampler = PatchSampler(scenes, patch, num_classes, seed=cfg.seed, random_fraction=cfg.random_fraction)
    dims = config["spatial_dims"]
    augment = Augment(
        dims,
        flip_axes=cfg.flip_axes,
        rot90=cfg.rot90,
        intensity=cfg.intensity,
        per_channel=cfg.intensity_per_channel,
        seed=cfg.seed,
    )
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(config["architecture"])
    if init_weights is not None:
        model.load_state_dict(init_weights)
    model.to(device).train()
    # Optional EMA of the weights (and BN statistics), validated and saved instead of the raw weights:
    # it damps step-to-step noise. Off by default: on the demo data it did not help (see scripts/).
    ema = AveragedModel(model, avg_fn=_ema_fn(cfg.ema_decay), use_buffers=True) if cfg.ema_decay > 0 else None
    scored = ema.module if ema is not None else model
    loss_fn = DiceCELoss(ignore_index=IGNORE)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * cfg.steps_per_epoch
    steps_done = 0

    def progress() -> float:
        """Share of the run done: steps, or the time budget when that runs out first (a shared or slow
        machine then still gets a fully annealed learning rate, not a run cut off at its peak)."""
        done = steps_done / total_steps
        if cfg.time_limit_s:
            done = max(done, (time.perf_counter() - t0) / cfg.time_limit_s)
        return min(1.0, done)

    def cosine(_: int) -> float:
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress()))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, cosine)
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    has_val = any(s.val_box is not None for s in scenes)
    losses: list[float] = []
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"score": -1.0, "epoch": 0, "per_class": {}}
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    drawn = np.zeros(num_classes + 1, np.int64)
    stop = False
    with _progress(cfg.progress) as bar:
        task = bar.add_task("train", total=total_steps, epoch=1, loss=float("nan"), lr=cfg.lr, val="-")
        for epoch in range(1, cfg.epochs + 1):
            for _ in range(cfg.steps_per_epoch):
                x, y, ks = make_batch(sampler, cfg.batch_size, augment)
                for k in ks:
                    drawn[k] += 1
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    logits = model(x)
                loss = loss_fn(logits.float(), y)
                optimiser.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimiser)
                scaler.update()
                schedule.step()
                if ema is not None:
                    ema.update_parameters(model)
                losses.append(float(loss.detach()))
                steps_done += 1
                bar.update(
                    task,
                    advance=1,
                    epoch=epoch,
                    loss=float(np.mean(losses[-20:])),
                    lr=schedule.get_last_lr()[0],
                )
                if progress() >= 1.0:
                    stop = True
                    break
            if has_val:
                conf = validate_model(scored, scenes, patch, num_classes, device=device, overlap=cfg.overlap)
                model.train()  # the predictor switched it to eval mode when no EMA is kept
                per_class = scores(conf, names)
                score = _mean_dice(per_class)
                history.append(
                    {
                        "epoch": epoch,
                        "step": steps_done,
                        "mean_dice": score,
                        "dice": {n: v["dice"] for n, v in per_class.items()},
                    }
                )
                # an epoch without any scorable class still beats the untrained start
                if (score if math.isfinite(score) else -0.5) > best["score"]:
                    best = {"score": score, "epoch": epoch, "step": steps_done, "per_class": per_class}
                    best_state = {k: v.detach().clone() for k, v in scored.state_dict().items()}
                bar.update(task, val=" ".join(f"{n}={v['dice']:.3f}" for n, v in per_class.items()))
            if stop:
                break
    if not has_val:
        best_state = {k: v.detach().clone() for k, v in scored.state_dict().items()}
        best = {"score": float("nan"), "epoch": epoch, "step": steps_done, "per_class": {}}
    seconds = time.perf_counter() - t0
    config["card"] = model_card(
        cfg, config, best, history, sampler, drawn, steps_done, epoch, seconds, device
    )
    bundle = save_bundle(cfg.out, config, best_state, overwrite=cfg.overwrite)
    return TrainResult(bundle, losses, history, best, seconds)
