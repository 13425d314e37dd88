"""Train a 2-D/3-D U-Net or FCN bundle from image/label scenes, read and normalised as inference does.

Training-serving skew is the quiet killer of deployed models, so nothing here has its own I/O or
normalisation: scenes are opened with the pipeline's readers (same orientation rules for NIfTI), and
inputs go through :class:`pipeline.execution.preprocess.Preprocessor` built from the very bundle config
that is saved. The z-score statistics are computed from the training region of the training scenes and
written into that config. Validation is spatial (a held-out box, never random pixels, which would leak through
spatial autocorrelation) and runs the block engine (``infer_array``) over the held-out crop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from models.bundle import Bundle, default_color, load_bundle, save_bundle, validate_config
from models.nets.registry import build_model
from models.training.losses import DiceCELoss
from models.training.sampling import (
    Augment,
    PatchSampler,
    SelectedScene,
    TrainScene,
    load_pairs,
    make_batch,
    spacing_of,
    zscore_stats,
)
from pipeline.core.box import Box
from pipeline.errors import ConfigError, InputError
from pipeline.execution.preprocess import Preprocessor
from pipeline.job.evaluate import (
    IGNORE,
    confusion,
    scores,
)


@dataclass
class TrainConfig:
    """Everything one training run needs; the CLI and the scripts fill it in."""

    images: list[str]
    labels: list[str]
    out: str
    classes: list[str] | None = None  # required unless bundle_init gives them
    colors: list[str] | None = None
    bundle_init: str | None = None  # start from this bundle's architecture and weights
    arch: str = "unet"
    features: list[int] | None = None
    net_norm: str = "batch"
    channels: list[str] | None = None  # input names, e.g. B02,B03,B04,B08
    band_indexes: list[int] | None = None  # 1-based bands to feed the net
    normalization: str = "zscore"  # zscore (statistics from the data) | percentile | none
    label_map: str | dict[int, int] | None = None
    ignore_value: int | None = IGNORE
    val_region: str | None = None
    patch_size: list[int] | None = None
    overlap: float = 0.25
    epochs: int = 10
    steps_per_epoch: int = 50
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    flip_axes: list[int] | None = None  # None: every spatial axis
    rot90: bool | None = None  # None: in 2-D only
    intensity: float = 0.1
    intensity_per_channel: bool = False
    random_fraction: float = 0.1
    ema_decay: float = 0.0  # validate and save an exponential moving average of the weights (0: off)
    time_limit_s: float | None = None
    name: str | None = None
    description: str | None = None
    data_sources: list[str] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    command: str | None = None
    overwrite: bool = False
    progress: bool = True


@dataclass
class TrainResult:
    bundle: Bundle
    losses: list[float]
    validation: list[dict[str, Any]]
    best: dict[str, Any]
    seconds: float


def _base_config(cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """The bundle config to fill in, and starting weights (from ``bundle_init``), if any."""
    if cfg.bundle_init:
        init = load_bundle(cfg.bundle_init)
        base = init.config.model_dump(mode="json")
        weights = init.build().state_dict()
        if cfg.classes and cfg.classes != init.class_names:
            raise ConfigError(f"--classes {cfg.classes} differ from the init bundle's {init.class_names}")
        return base, weights
    if not cfg.classes:
        raise ConfigError("give the class names (or --bundle-init)")
    arch: dict[str, Any] = {"name": cfg.arch, "out_channels": len(cfg.classes)}
    if cfg.features:
        arch["features"] = [int(f) for f in cfg.features]
    if cfg.net_norm != "batch":
        arch["norm"] = cfg.net_norm
    base = {
        "name": cfg.name or Path(cfg.out).resolve().name,
        "architecture": arch,
        "inputs": {"channels": cfg.channels or [], "band_indexes": cfg.band_indexes},
        "orientation": "RAS",
        "target_spacing": None,
        "overlap": cfg.overlap,
        "classes": [
            {"name": c, "color": (cfg.colors or [])[i] if i < len(cfg.colors or []) else default_color(i)}
            for i, c in enumerate(cfg.classes)
        ],
    }
    return base, None


def _finish_config(cfg: TrainConfig, base: dict[str, Any], scene: Any, in_channels: int) -> dict[str, Any]:
    dims = len(scene.shape) - 1
    config = dict(base)
    arch = dict(config["architecture"])
    arch.setdefault("spatial_dims", dims)
    arch.setdefault("in_channels", in_channels)
    config["architecture"] = arch
    config["spatial_dims"] = dims
    names = config["inputs"].get("channels") or []
    if not names:
        # GeoTIFF band descriptions when the file has them, else ch<band>
        desc = list(getattr(getattr(scene, "dataset", None), "descriptions", None) or ())
        bands = config["inputs"].get("band_indexes") or list(range(1, in_channels + 1))
        names = [desc[b - 1] if b - 1 < len(desc) and desc[b - 1] else f"ch{b}" for b in bands]
    config["inputs"] = {**config["inputs"], "channels": list(names)}
    patch = cfg.patch_size or config.get("patch_size") or ([256] * 2 if dims == 2 else [96] * 3)
    config["patch_size"] = [int(patch[0])] * dims if len(patch) == 1 else [int(p) for p in patch]
    if not config.get("target_spacing"):
        config["target_spacing"] = spacing_of(scene.meta)
    if cfg.name:
        config["name"] = cfg.name
    return config


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
    from pipeline import infer_array
    from pipeline.engine.predictor import Predictor

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
    import tempfile

    from pipeline.engine.predictor import resolve_device

    t0 = time.perf_counter()
    if cfg.epochs < 1 or cfg.steps_per_epoch < 1 or cfg.batch_size < 1:
        raise ConfigError("epochs, steps per epoch and batch size must be >= 1")
    if Path(cfg.out).exists() and not cfg.overwrite:
        raise ConfigError("output bundle exists; pass --overwrite to replace it", path=str(cfg.out))
    base, init_weights = _base_config(cfg)
    num_classes = len(base["classes"])
    with tempfile.TemporaryDirectory(prefix="tilewise-train-") as tmp:
        pairs = load_pairs(
            cfg.images,
            cfg.labels,
            num_classes,
            cache=Path(tmp),
            orientation=base["orientation"],
            target_spacing=base.get("target_spacing"),
            band_indexes=base["inputs"].get("band_indexes"),
            label_map=cfg.label_map,
            ignore_value=cfg.ignore_value,
            val_region=cfg.val_region,
        )
        for p in pairs[1:]:
            if p.raw.shape[0] != pairs[0].raw.shape[0] or p.raw.ndim != pairs[0].raw.ndim:
                raise InputError(f"channels/dims differ from {pairs[0].uri}", path=p.uri)
        config = _finish_config(cfg, base, pairs[0].scene, pairs[0].raw.shape[0])
        kind = cfg.normalization if not cfg.bundle_init else base["inputs"]["normalization"]["kind"]
        if kind == "zscore":
            mean, std = zscore_stats(pairs)
            config["inputs"]["normalization"] = {"kind": "zscore", "mean": mean, "std": std}
        elif kind in ("percentile", "none"):
            config["inputs"]["normalization"] = {"kind": kind}
        elif not cfg.bundle_init:
            raise ConfigError(f"normalization must be zscore, percentile or none, got {kind!r}")
        config["inputs"]["band_indexes"] = None  # load_pairs already picked the bands
        draft = validate_config(config)
        scenes = []
        for p in pairs:
            pre = Preprocessor.from_bundle(draft, SelectedScene(p), stats=True)
            image, invalid = pre.apply(p.raw, p.nodata, selected=True)
            labels = p.labels.copy()
            labels[invalid] = IGNORE
            spacing = tuple(spacing_of(p.scene.meta) or ())
            scenes.append(TrainScene(p.uri, image, labels, p.train_boxes, p.val_box, spacing))
            p.scene.close()
    config["inputs"]["band_indexes"] = base["inputs"].get("band_indexes") or cfg.band_indexes
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
    config["card"] = _card(cfg, config, best, history, sampler, drawn, steps_done, epoch, seconds, device)
    bundle = save_bundle(cfg.out, config, best_state, overwrite=cfg.overwrite)
    return TrainResult(bundle, losses, history, best, seconds)


def _rounded(per_class: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        n: {"dice": round(v["dice"], 4), "iou": round(v["iou"], 4), "support": int(v["support"])}
        for n, v in per_class.items()
    }


def _card(
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


def labels_from_probability_maps(
    maps: Sequence[str | Path], out: str | Path, *, scale: float = 255.0
) -> Path:
    """A label NIfTI from tissue probability maps: argmax of (1 - sum, p1, p2, ...), class 0 = the rest.

    The maps are read on their own grid (values ``p * scale``) and the result keeps their affine and
    qform/sform codes, so it overlays the image the maps belong to voxel for voxel.
    """
    import nibabel as nib

    imgs = [nib.load(str(m)) for m in maps]
    first = imgs[0]
    for m, img in zip(maps, imgs, strict=True):
        if img.shape != first.shape or not np.allclose(img.affine, first.affine, atol=1e-4):
            raise InputError("probability maps differ in shape or affine", path=str(m))
    probs = np.stack([np.asarray(img.dataobj, dtype=np.float32) / scale for img in imgs])
    stack = np.concatenate([np.clip(1.0 - probs.sum(axis=0), 0.0, None)[None], probs])
    labels = np.argmax(stack, axis=0).astype(np.uint8)
    header = first.header.copy()
    header.set_data_dtype(np.uint8)
    img = nib.Nifti1Image(labels, first.affine, header)
    img.set_qform(first.affine, code=int(first.header["qform_code"]))
    img.set_sform(first.affine, code=int(first.header["sform_code"]))
    img.header.set_slope_inter(1.0, 0.0)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(out))
    return out


def update_card(bundle_path: str | Path, updates: dict[str, Any]) -> Bundle:
    """Merge ``updates`` into a bundle's card (one level deep) and rewrite it with the same weights."""
    from safetensors.torch import load_file

    bundle = load_bundle(bundle_path)
    config = bundle.config.model_dump(mode="json")
    card = dict(config.get("card") or {})
    for key, value in updates.items():
        card[key] = (
            {**card[key], **value} if isinstance(card.get(key), dict) and isinstance(value, dict) else value
        )
    config["card"] = card
    assert bundle.weights is not None
    state = load_file(str(bundle.weights))
    return save_bundle(bundle.path, config, state, overwrite=True)
