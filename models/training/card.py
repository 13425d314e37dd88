"""The model card a trained bundle carries: what it was trained on, how, and how well it did.

A bundle found on disk months later must say where it came from and how far to trust it, so the card
records the data and licences, the validation scores (from the block engine over the held-out region,
as a real run would predict it), and every setting needed to repeat the run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.bundle import Bundle, load_bundle, save_bundle
from models.training.config import TrainConfig
from models.training.sampling import PatchSampler
from pipeline.errors import BundleError
from pipeline.job.evaluate import IGNORE


def _rounded(per_class: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        n: {"dice": round(v["dice"], 4), "iou": round(v["iou"], 4), "support": int(v["support"])}
        for n, v in per_class.items()
    }


def model_card(
    cfg: TrainConfig,
    config: dict[str, Any],
    best: dict[str, Any],
    history: list[dict[str, Any]],
    sampler: PatchSampler,
    drawn: np.ndarray,
    steps: int,
    epochs: int,
    seconds: float,
    device: torch.device,
) -> dict[str, Any]:
    import monai

    names = [c["name"] for c in config["classes"]]
    freq = sampler.class_frequencies()
    centres = drawn[:-1] / max(1, int(drawn.sum()))
    card: dict[str, Any] = {
        "description": cfg.description
        or f"{config['architecture']['name']} trained by tilewise train on {len(cfg.images)} scene(s).",
        "data": list(cfg.data_sources) or [str(p) for p in cfg.images],
        "license": "; ".join(cfg.licenses) if cfg.licenses else "see the data sources",
    }
    if cfg.bundle_init:
        card["initialised_from"] = str(cfg.bundle_init)
    card["metrics"] = {
        "validation": _rounded(best["per_class"]),
        "validation_mean_dice": round(best["score"], 4) if math.isfinite(best["score"]) else None,
        "best_epoch": best["epoch"],
        "how": "block engine (infer_array) over the held-out box plus a half-patch margin; best epoch kept",
    }
    card["training"] = {
        "seconds": round(seconds, 1),
        "steps": steps,
        "epochs": epochs,
        "steps_per_epoch": cfg.steps_per_epoch,
        "batch_size": cfg.batch_size,
        "patch_size": list(config["patch_size"]),
        "optimizer": f"AdamW lr={cfg.lr:g} weight_decay={cfg.weight_decay:g}; cosine to lr/100 over "
        f"{cfg.epochs}x{cfg.steps_per_epoch} steps"
        + (f" or {cfg.time_limit_s:g} s, whichever ends first" if cfg.time_limit_s else "")
        + (f"; weights saved as their EMA (decay {cfg.ema_decay:g})" if cfg.ema_decay > 0 else ""),
        "loss": f"Dice + cross-entropy, label {IGNORE} (unlabelled) ignored",
        "sampling": f"class-balanced centres, {cfg.random_fraction:.0%} uniform",
        "augmentation": _augment_text(cfg, config["spatial_dims"]),
        "validation_region": cfg.val_region or "",
        "validation_history": [{"epoch": h["epoch"], "mean_dice": round(h["mean_dice"], 4)} for h in history],
        "label_map": cfg.label_map if isinstance(cfg.label_map, str) else None,
        "ignore_value": cfg.ignore_value,
        "images": [str(p) for p in cfg.images],
        "labels": [str(p) for p in cfg.labels],
        "labelled_class_fraction": {n: round(float(f), 4) for n, f in zip(names, freq, strict=True)},
        "patch_centre_class_fraction": {n: round(float(f), 4) for n, f in zip(names, centres, strict=True)},
        "device": str(device),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "seed": cfg.seed,
        "command": cfg.command or "",
    }
    return card


def _augment_text(cfg: TrainConfig, dims: int) -> str:
    axes = list(range(dims)) if cfg.flip_axes is None else list(cfg.flip_axes)
    rot = cfg.rot90 if cfg.rot90 is not None else dims == 2
    parts = [f"flips on axes {axes}"] + (["90° rotations"] if rot else [])
    if cfg.intensity > 0:
        each = "per-channel " if cfg.intensity_per_channel else ""
        parts.append(f"{each}intensity scale/shift ±{cfg.intensity:g}")
    return ", ".join(parts) + " (MONAI)"


def update_card(bundle_path: str | Path, updates: dict[str, Any]) -> Bundle:
    """Merge ``updates`` into a bundle's card (one level deep) and rewrite it with the same weights."""
    bundle = load_bundle(bundle_path)
    if bundle.weights is None:
        raise BundleError("an archive bundle has no weights file to rewrite", path=str(bundle.path))
    config = bundle.config.model_dump(mode="json")
    card = dict(config.get("card") or {})
    for key, value in updates.items():
        card[key] = (
            {**card[key], **value} if isinstance(card.get(key), dict) and isinstance(value, dict) else value
        )
    config["card"] = card
    return save_bundle(bundle.path, config, bundle.build().state_dict(), overwrite=True)
