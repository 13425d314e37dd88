"""``tilewise train`` and ``tilewise evaluate``: make a bundle from labelled scenes, then score it.

The bundle's model card records the ``tilewise train`` command line, rebuilt from the parsed options,
so anyone can rerun it. torch loads inside the commands.
"""

from __future__ import annotations

import json
import math
import shlex
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flows.cli.errors import reported
from flows.cli.options import Arch, int_list
from pipeline.errors import ConfigError

console = Console(stderr=True)


class NetNorm(StrEnum):
    batch = "batch"
    instance = "instance"
    none = "none"


class Norm(StrEnum):
    zscore = "zscore"
    percentile = "percentile"
    none = "none"


def _names(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


def _command(ctx: typer.Context) -> str:
    """The command line as a user would retype it, rebuilt from the parsed options (so it is right
    however the command was invoked: console script, ``python -m``, or a test runner)."""
    parts = ["tilewise", ctx.info_name or "train"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if value is None or value == param.default or (param.multiple and not value):
            continue
        if param.param_type_name != "option":
            parts.append(str(value))
            continue
        opt = max(param.opts, key=len)
        if getattr(param, "is_flag", False):
            parts.append(opt if value else (param.secondary_opts or [opt])[0])
            continue
        for item in value if param.multiple else [value]:
            parts += [opt, str(getattr(item, "value", item))]
    return shlex.join(parts)


Images = Annotated[list[Path], typer.Option("--images", "-i", help="Image scene; repeat for several.")]
Labels = Annotated[
    list[Path], typer.Option("--labels", "-l", help="Label raster/volume on the same grid, one per --images.")
]
LabelMap = Annotated[
    str | None,
    typer.Option(help="Raw label value (or inclusive range) to class id, e.g. '1-7:0,8:1'; others ignored."),
]
IgnoreValue = Annotated[int, typer.Option(help="Raw label value meaning 'unlabelled' (when no --label-map).")]


def train_cmd(
    ctx: typer.Context,
    images: Images,
    labels: Labels,
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to write.")],
    classes: Annotated[str | None, typer.Option(help="Class names in id order, e.g. land,water.")] = None,
    colors: Annotated[str | None, typer.Option(help="Class colours, e.g. '#a0a0a0,#1f78b4'.")] = None,
    bundle_init: Annotated[
        Path | None, typer.Option(help="Start from this bundle (architecture, classes, weights).")
    ] = None,
    arch: Annotated[Arch, typer.Option(help="Network when not --bundle-init.")] = Arch.unet,
    features: Annotated[str | None, typer.Option(help="Widths per level, e.g. 16,32,64.")] = None,
    net_norm: Annotated[NetNorm, typer.Option(help="Norm layers (instance suits small 3-D batches).")] = (
        NetNorm.batch
    ),
    channels: Annotated[str | None, typer.Option(help="Input channel names, e.g. B02,B03,B04,B08.")] = None,
    bands: Annotated[str | None, typer.Option(help="1-based bands to feed the net, e.g. 1,2,3,4.")] = None,
    normalization: Annotated[
        Norm, typer.Option(help="zscore: per-channel mean/std computed from the training region.")
    ] = Norm.zscore,
    label_map: LabelMap = None,
    ignore_value: IgnoreValue = 255,
    val_region: Annotated[
        str | None,
        typer.Option(help="Held-out region, e.g. 'x>=2/3' (eastern third) or 'z=80:110' (axial slab)."),
    ] = None,
    patch_size: Annotated[str | None, typer.Option(help="Patch edge(s), e.g. 128 or 64,64,64.")] = None,
    overlap: Annotated[
        float, typer.Option(min=0.0, max=0.95, help="Window overlap (bundle default).")
    ] = 0.25,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs; validation after each.")] = 10,
    steps_per_epoch: Annotated[int, typer.Option(min=1, help="Optimiser steps per epoch.")] = 50,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate (cosine decay).")] = 2e-3,
    weight_decay: Annotated[float, typer.Option()] = 1e-4,
    flip_axes: Annotated[str | None, typer.Option(help="Spatial axes to flip (default: all).")] = None,
    rot90: Annotated[bool | None, typer.Option("--rot90/--no-rot90", help="Default: on in 2-D.")] = None,
    intensity: Annotated[float, typer.Option(min=0.0, help="Intensity scale/shift jitter.")] = 0.1,
    random_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of uniformly placed patches (rest class-balanced).")
    ] = 0.1,
    ema: Annotated[
        float,
        typer.Option(min=0.0, max=0.9999, help="Validate/save an EMA of the weights, e.g. 0.99 (0: off)."),
    ] = 0.0,
    per_channel_jitter: Annotated[
        bool, typer.Option("--per-channel-jitter", help="Jitter each channel on its own (band ratios too).")
    ] = False,
    time_limit: Annotated[
        float | None, typer.Option(help="Seconds; the LR schedule anneals to it if it ends before the steps.")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto|cpu|cuda (bf16 autocast on CUDA).")] = "auto",
    name: Annotated[str | None, typer.Option(help="Bundle name (default: folder name).")] = None,
    description: Annotated[str | None, typer.Option(help="Model card description.")] = None,
    data_source: Annotated[
        list[str] | None, typer.Option("--data-source", help="Model card data line; repeat.")
    ] = None,
    license: Annotated[
        list[str] | None, typer.Option("--license", help="Model card licence line; repeat.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Train a U-Net/FCN bundle on labelled scenes; validate on a held-out region; keep the best epoch."""
    from models.training import TrainConfig, train

    if len(images) != len(labels):
        raise typer.BadParameter(f"{len(images)} --images but {len(labels)} --labels", param_hint="--labels")
    cfg = TrainConfig(
        images=[str(p) for p in images],
        labels=[str(p) for p in labels],
        out=str(out),
        classes=_names(classes),
        colors=_names(colors),
        bundle_init=str(bundle_init) if bundle_init else None,
        arch=arch.value,
        features=int_list(features, "--features"),
        net_norm=net_norm.value,
        channels=_names(channels),
        band_indexes=int_list(bands, "--bands"),
        normalization=normalization.value,
        label_map=label_map,
        ignore_value=ignore_value,
        val_region=val_region,
        patch_size=int_list(patch_size, "--patch-size"),
        overlap=overlap,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        flip_axes=int_list(flip_axes, "--flip-axes"),
        rot90=rot90,
        intensity=intensity,
        intensity_per_channel=per_channel_jitter,
        random_fraction=random_fraction,
        ema_decay=ema,
        time_limit_s=time_limit,
        seed=seed,
        device=device,
        name=name,
        description=description,
        data_sources=list(data_source or []),
        licenses=list(license or []),
        command=_command(ctx),
        overwrite=overwrite,
        progress=not quiet,
    )
    with reported(ctx):
        result = train(cfg)
    table = Table(title=f"{result.bundle.config.name}, held-out, epoch {result.best['epoch']}")
    for col in ("class", "dice", "iou", "pixels"):
        table.add_column(col)
    for cls, v in result.best["per_class"].items():
        table.add_row(cls, f"{v['dice']:.4f}", f"{v['iou']:.4f}", f"{int(v['support'])}")
    Console().print(table)
    Console().print(
        f"wrote {result.bundle.path} in {result.seconds:.0f} s (sha256 {result.bundle.hash[:12]})"
    )


def _thresholds(items: list[str] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise typer.BadParameter(f"expected CLASS=VALUE, got {item!r}", param_hint="--min-dice")
    return out


def render_scores(result: dict) -> Table:
    table = Table(title=f"{result['bundle']} on region {result['region'] or '(whole scene)'}")
    for col in ("class", "dice", "iou", "labelled px", "fp", "fn"):
        table.add_column(col, justify="right" if col != "class" else "left")
    for cls, v in result["per_class"].items():
        dice = "n/a" if math.isnan(v["dice"]) else f"{v['dice']:.4f}"
        iou = "n/a" if math.isnan(v["iou"]) else f"{v['iou']:.4f}"
        table.add_row(cls, dice, iou, f"{int(v['support'])}", f"{int(v['fp'])}", f"{int(v['fn'])}")
    table.caption = (
        f"pixel accuracy {result['pixel_accuracy']:.4f}, {result['seconds']:.1f} s (tiled pipeline)"
    )
    return table


def evaluate_cmd(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    images: Images,
    labels: Labels,
    label_map: LabelMap = None,
    ignore_value: IgnoreValue = 255,
    region: Annotated[
        str | None, typer.Option(help="Region to score, e.g. 'x>=2/3'; 'val' = the bundle's held-out region.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    device: Annotated[str | None, typer.Option(help="auto|cpu|cuda")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the scores as JSON.")] = None,
    min_dice: Annotated[
        list[str] | None, typer.Option("--min-dice", help="CLASS=VALUE; exit 1 if below (repeat).")
    ] = None,
) -> None:
    """Run the tiled pipeline on labelled scenes and print per-class Dice/IoU on a region."""
    from pipeline.job.evaluate import evaluate_bundle

    limits = _thresholds(min_dice)
    overrides = {"execution.batch_size": batch_size, "execution.device": device}
    with reported(ctx):
        result = evaluate_bundle(
            bundle,
            [str(p) for p in images],
            [str(p) for p in labels],
            region,
            label_map,
            ignore_value=ignore_value,
            overrides={k: v for k, v in overrides.items() if v is not None},
        )
        unknown = [c for c in limits if c not in result["per_class"]]
        if unknown:
            raise ConfigError(f"--min-dice names unknown classes {unknown}")
    Console().print(render_scores(result))
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2, default=str))
    low = {
        c: result["per_class"][c]["dice"]
        for c, v in limits.items()
        if not result["per_class"][c]["dice"] >= v
    }
    if low:
        console.print(f"[red]below --min-dice:[/red] {low}", highlight=False)
        raise typer.Exit(1)
