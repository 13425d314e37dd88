"""``tilewise run``, ``plan`` and ``info``: segment scenes, preview the work, or show what a reader sees.

``run`` exits 0 only when every scene succeeded. Heavy modules (Prefect, torch, GDAL) load inside the
commands, so ``tilewise --help`` and ``info`` stay fast.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from flows.cli.errors import debug_enabled, reported
from flows.cli.options import int_list
from pipeline.errors import TilewiseError

Input = Annotated[str, typer.Argument(help="Scene file, folder, glob or URL.")]
Output = Annotated[str, typer.Argument(help="Output folder.")]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Model bundle folder.")]
TrustCodeOpt = Annotated[
    bool, typer.Option("--trust-code", help="Evaluate $ expressions of a MONAI bundle config (Python code).")
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML job config (configs/).")]


def _config(config: Path | None, **flags: Any) -> Any:
    from pipeline.job.config import load_config

    return load_config(config, flags)


def _progress_factory(bar: Any) -> Any:
    """One progress row per scene, with its block rate."""

    def factory(uri: str, _: int) -> Any:
        task = bar.add_task(Path(uri.rstrip("/")).name[:40], total=None, rate="")
        start = time.perf_counter()

        def tick(done: int, total: int) -> None:
            elapsed = max(time.perf_counter() - start, 1e-6)
            bar.update(task, completed=done, total=total, rate=f"{done / elapsed:.2f} blocks/s")

        return tick

    return factory


def _report(summary: Any, console: Console, out: Console) -> int:
    """Print the per-scene table and failures; the exit code: 0 all ok, 1 any failed, 3 nothing found."""
    results = summary.results
    table = Table(title="tilewise run")
    for col in ("scene", "status", "seconds", "windows", "outputs / reason"):
        table.add_column(col)
    for r in results:
        colour = {"ok": "green", "skipped": "yellow"}.get(r.status, "red")
        detail = Text(r.reason or str(Path(r.outputs.get("labels", "")).name))
        table.add_row(r.stem, f"[{colour}]{r.status}[/{colour}]", f"{r.seconds:.1f}", str(r.windows), detail)
    out.print(table)
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        console.print(Text.assemble(("failed:", "red"), " ", r.reason), highlight=False, soft_wrap=True)
    if not results and summary.unchanged:  # a bucket with nothing new since the last run
        console.print(
            f"nothing new: {summary.unchanged} scene(s) already processed with this bundle and config"
        )
        return 0
    if not results:
        console.print("[yellow]no scenes found[/yellow]")
        return 3
    return 1 if failed else 0


def run_cmd(
    ctx: typer.Context,
    input: Input,
    output: Output,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    format: Annotated[str | None, typer.Option(help="auto|geotiff|nifti|zarr")] = None,
    probabilities: Annotated[bool | None, typer.Option("--probabilities/--no-probabilities")] = None,
    polygons: Annotated[bool | None, typer.Option("--polygons/--no-polygons")] = None,
    patch_size: Annotated[str | None, typer.Option(help="e.g. 256 or 96,96,96")] = None,
    overlap: Annotated[float | None, typer.Option()] = None,
    blend: Annotated[str | None, typer.Option(help="gaussian|constant|cosine|crop")] = None,
    block_size: Annotated[str | None, typer.Option(help="block edge(s) in pixels")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str | None, typer.Option(help="auto|cpu|cuda")] = None,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="flip averaging")] = None,
    min_object_size: Annotated[int | None, typer.Option(help="merge smaller objects (pixels)")] = None,
    workers: Annotated[int | None, typer.Option(help="local Dask worker processes (0: this process)")] = None,
    scheduler: Annotated[str | None, typer.Option(help="tcp://host:8786 of a Dask cluster")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="replace existing outputs")] = None,
    keep_work: Annotated[bool | None, typer.Option("--keep-work", help="keep the work folder")] = None,
    trust_code: TrustCodeOpt = False,
) -> None:
    """Segment every scene under INPUT into OUTPUT (an s3:// OUTPUT runs the bucket flow once)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console, out = Console(stderr=True), Console()
    debug = debug_enabled(ctx)
    if not debug:  # the progress bar and table speak for the run; Prefect's console says only warnings
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    with reported(ctx):
        cfg = _config(
            config,
            input=input,
            output=output,
            model=model,
            **{
                "outputs.format": format,
                "outputs.probabilities": probabilities,
                "outputs.polygons": polygons,
                "tiling.patch_size": int_list(patch_size, "--patch-size"),
                "tiling.overlap": overlap,
                "tiling.blend": blend,
                "tiling.block_size": int_list(block_size, "--block-size"),
                "execution.batch_size": batch_size,
                "execution.device": device,
                "execution.tta": tta,
                "outputs.min_object_size": min_object_size,
                "execution.workers": workers,
                "execution.scheduler": scheduler,
                "outputs.overwrite": overwrite,
                "outputs.keep_work": keep_work,
                "model_options.trust_code": True if trust_code else None,
            },
        )
        from flows.bucket import run_bucket_job
        from flows.folder import run_folder_job

        job = run_bucket_job if output.startswith("s3://") else run_folder_job
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        rate = (TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
        with Progress(*columns, *rate, console=console, transient=False) as bar:
            summary = job(cfg, progress=_progress_factory(bar), debug=debug)
    raise typer.Exit(_report(summary, console, out))


def plan_cmd(
    ctx: typer.Context,
    input: Input,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    patch_size: Annotated[str | None, typer.Option()] = None,
    overlap: Annotated[float | None, typer.Option()] = None,
    block_size: Annotated[str | None, typer.Option()] = None,
    trust_code: TrustCodeOpt = False,
) -> None:
    """Dry run: the scenes, their window grid and blocks, and a memory estimate. Computes nothing."""
    from models.bundle.sources import open_model
    from pipeline.core.tiling import BlockPlan
    from pipeline.execution.preprocess import Preprocessor
    from pipeline.job.discover import discover
    from pipeline.job.scene_job import open_options, plan_scene

    with reported(ctx):
        cfg = _config(
            config,
            input=input,
            model=model,
            **{
                "tiling.patch_size": int_list(patch_size, "--patch-size"),
                "tiling.overlap": overlap,
                "tiling.block_size": int_list(block_size, "--block-size"),
            },
        )
        if not cfg.model:
            raise typer.BadParameter("--model is required")
        bundle = open_model(cfg.model, options={"trust_code": True} if trust_code else None)
        out, table = Console(), Table(title=f"plan with {bundle.config.name}")
        for col in ("scene", "shape", "patch", "windows", "blocks", "block", "est. MB/worker", "note"):
            table.add_column(col)
        # a reader may cache a decompressed volume; a plan leaves nothing behind
        with tempfile.TemporaryDirectory(prefix="tilewise-plan-") as work:
            for source in discover(cfg.input):
                try:
                    scene = open_options(source, bundle, Path(work)).open()
                    try:
                        Preprocessor.from_bundle(bundle, scene)
                        roi, ovl, block = plan_scene(scene, bundle, cfg)
                        shape = scene.shape
                    finally:
                        scene.close()
                    grid = BlockPlan.build(shape[1:], roi, ovl, block)
                    # the block's read region (block plus one window) in float32: scores, weights, input
                    footprint = math.prod(b + r for b, r in zip(block, roi, strict=True))
                    mb = footprint * 4 * (bundle.num_classes + 1 + shape[0]) / 2**20
                    row = (
                        source.uri,
                        "x".join(map(str, shape)),
                        "x".join(map(str, roi)),
                        str(grid.window_count),
                        str(math.prod(grid.grid_shape)),
                        "x".join(map(str, block)),
                        f"{mb:.0f}",
                        "",
                    )
                    table.add_row(*row)
                except TilewiseError as exc:
                    table.add_row(source.uri, "", "", "", "", "", "", Text(str(exc), style="red"))
        out.print(table)


def info_cmd(ctx: typer.Context, path: Annotated[str, typer.Argument(help="A scene file or URL.")]) -> None:
    """Print what the reader sees: shape, dtype, georeferencing or voxel grid, nodata."""
    from pipeline.job.discover import discover

    out = Console()
    with reported(ctx):
        for source in discover(path):
            scene = source.open()
            table = Table(title=source.uri, show_header=False)
            table.add_row("reader", source.kind)
            table.add_row("shape (C, *spatial)", str(tuple(scene.shape)))
            table.add_row("dtype", str(scene.dtype))
            for key, value in vars(scene.meta).items() if scene.meta is not None else []:
                if key == "header":
                    continue
                text = str(value)
                table.add_row(key, text if len(text) < 300 else text[:300] + "…")
            out.print(table)
            scene.close()
