"""``tilewise bundle``: make a fresh bundle, or look inside one before trusting it with a job.

torch loads inside the commands (through ``models.bundle``), so mounting this app costs nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from flows.cli.bundle_io import TrustCode, export_cmd, import_app, model_options
from flows.cli.bundle_nnunet import import_nnunet_cmd
from flows.cli.bundle_smp import import_smp_cmd, import_torchgeo_cmd
from flows.cli.errors import reported
from flows.cli.options import Arch, int_list
from pipeline.errors import OutputError

if TYPE_CHECKING:
    from models.bundle import Bundle

bundle_app = typer.Typer(help="Create and inspect model bundles.", no_args_is_help=True, add_completion=False)
import_app.command("nnunet")(import_nnunet_cmd)  # the MONAI importer sits in bundle_io
import_app.command("smp")(import_smp_cmd)
import_app.command("torchgeo")(import_torchgeo_cmd)


@bundle_app.command("init")
def init_cmd(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Bundle folder to create.")],
    classes: Annotated[str, typer.Option("--classes", help="Class names, comma-separated, e.g. land,water.")],
    arch: Annotated[Arch, typer.Option("--arch", help="Network architecture.")] = Arch.unet,
    spatial_dims: Annotated[int, typer.Option("--spatial-dims", min=2, max=3, help="2 or 3.")] = 2,
    in_channels: Annotated[int, typer.Option("--in-channels", min=1, help="Input channels/bands.")] = 3,
    patch_size: Annotated[int | None, typer.Option("--patch-size", min=1, help="Patch edge.")] = None,
    features: Annotated[str | None, typer.Option("--features", help="Widths, e.g. 16,32,64.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing folder.")] = False,
) -> None:
    """Make a randomly initialised bundle (smoke tests, training start)."""
    names = [c.strip() for c in classes.split(",") if c.strip()]
    if not names:
        raise typer.BadParameter("give at least one class name", param_hint="--classes")
    feats = int_list(features, "--features", positive=True)
    with reported(ctx):
        if out.exists() and not overwrite:
            raise OutputError("exists; pass --overwrite to replace it", path=str(out))
        from models.bundle import init_bundle

        bundle = init_bundle(
            out, arch.value, spatial_dims, in_channels, names, patch_size, feats, overwrite=overwrite
        )
    Console().print(
        f"wrote bundle [bold]{bundle.config.name}[/] to {bundle.path} (sha256 {bundle.hash[:12]})"
    )


def _swatch(color: str) -> Text:
    return Text("  ", style=f"on {color}") + Text(f" {color}")


ACCUMULATE = {
    "nnunet": "float16 in nnU-Net's tile order, its labels exactly",
    "float32": "float32, more precise than nnU-Net's own",
}


def render(bundle: Bundle) -> Table:
    """The bundle as a two-column table: everything a job will take from it."""
    cfg = bundle.config
    arch = {k: v for k, v in cfg.architecture.items() if k != "name"}
    norm = cfg.inputs.normalization.model_dump(exclude_defaults=True, exclude={"kind"})
    table = Table(title=f"bundle {cfg.name}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")  # never truncate the hash
    table.add_row("path", str(bundle.path))
    table.add_row("kind", getattr(bundle, "kind", "tilewise"))
    nnunet = cfg.card.get("nnunet")
    if isinstance(nnunet, dict):  # an nnU-Net folder, or a bundle imported from one
        found = f"configuration {nnunet.get('configuration')}, folds {', '.join(nnunet.get('folds', []))}"
        table.add_row("nnU-Net", f"{found}, checkpoint {nnunet.get('checkpoint')}")
        table.add_row("sums", f"{cfg.accumulate} (" + ACCUMULATE[cfg.accumulate] + ")")
    table.add_row("architecture", f"{cfg.architecture['name']} {json.dumps(arch, default=str)}")
    table.add_row("spatial dims", str(cfg.spatial_dims))
    bands = f" (bands {cfg.inputs.band_indexes})" if cfg.inputs.band_indexes else ""
    table.add_row("channels", ", ".join(cfg.inputs.channels) + bands)
    table.add_row("normalization", f"{cfg.inputs.normalization.kind} {json.dumps(norm) if norm else ''}")
    if cfg.inputs.crop_nonzero:
        table.add_row("crop", "each case to its non-zero box (nnU-Net), labels padded back")
    table.add_row("patch size", " x ".join(str(p) for p in cfg.patch_size))
    table.add_row("overlap", f"{cfg.overlap:g}")
    if cfg.spatial_dims == 3:
        table.add_row("orientation", cfg.orientation)
    spacing = " x ".join("as is" if s is None else f"{s:g}" for s in cfg.target_spacing or [])
    table.add_row("target spacing", spacing or "as is")
    stages = {"blended": " (of the blended scores)", "inverted": " (of the scores back on the input's grid)"}
    stage = stages.get(cfg.activation_stage, "")
    table.add_row("activation", cfg.output_activation + stage)
    if cfg.blend or cfg.sigma_scale or cfg.batch_size:
        window = {"blend": cfg.blend, "sigma_scale": cfg.sigma_scale, "batch_size": cfg.batch_size}
        table.add_row("sliding window", json.dumps({k: v for k, v in window.items() if v is not None}))
    if cfg.postprocess is not None:
        table.add_row("postprocess", json.dumps(cfg.postprocess.model_dump(exclude_defaults=True)))
    classes = Text()
    for i, c in enumerate(cfg.classes):
        classes += Text(f"{i}: {c.name} ") + _swatch(c.color) + Text("\n" if i < len(cfg.classes) - 1 else "")
    table.add_row("classes", classes)
    table.add_row("parameters", f"{bundle.param_count():,}")
    table.add_row("sha256", bundle.hash)
    for key, value in cfg.card.items():
        table.add_row(f"card.{key}", value if isinstance(value, str) else json.dumps(value, default=str))
    return table


@bundle_app.command("info")
def info_cmd(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(help="Model: bundle folder (or its model.yaml), nnU-Net folder, MONAI bundle, .onnx."),
    ],
    trust_code: TrustCode = False,
) -> None:
    """Show what a model expects and produces: kind, channels, classes, patch, spacing, weights hash."""
    from models.bundle.sources import open_model

    with reported(ctx):
        table = render(open_model(path, options=model_options(trust_code)))
    Console().print(table)


bundle_app.add_typer(import_app, name="import")
bundle_app.command("export")(export_cmd)
