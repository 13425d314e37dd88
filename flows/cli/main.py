"""The ``tilewise`` command: run, plan, info, bundle.

Errors a user can cause print one line naming the file and the problem, and exit with the code of
their family (``--debug`` shows the traceback). ``run`` exits 0 only when every scene succeeded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from flows.cli.bundle import bundle_app
from flows.cli.serve import serve_cmd
from flows.cli.train import evaluate_cmd, train_cmd
from pipeline.errors import TilewiseError

app = typer.Typer(
    help="Exact, seam-free segmentation of huge rasters and volumes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(bundle_app, name="bundle")
console = Console(stderr=True)
out = Console()

_debug = False


def _fail(exc: TilewiseError) -> typer.Exit:
    if _debug:
        raise exc
    console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(exc.exit_code)


def _ints(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not a list of integers") from exc


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    global _debug
    _debug = debug
    os.environ.setdefault("DO_NOT_TRACK", "1")


def _config(config: Path | None, **flags: Any) -> Any:
    from pipeline.job.config import load_config

    return load_config(config, flags)


Input = Annotated[str, typer.Argument(help="Scene file, folder, glob or URL.")]
Output = Annotated[str, typer.Argument(help="Output folder.")]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Model bundle folder.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML job config (configs/).")]


@app.command()
def run(
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
) -> None:
    """Segment every scene under INPUT into OUTPUT (an s3:// OUTPUT runs the bucket flow once)."""
    if not _debug:  # the progress bar and table speak for the run; Prefect's console says only warnings
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    from flows.bucket import run_bucket_job
    from flows.folder import run_folder_job

    try:
        cfg = _config(
            config,
            input=input,
            output=output,
            model=model,
            **{
                "outputs.format": format,
                "outputs.probabilities": probabilities,
                "outputs.polygons": polygons,
                "tiling.patch_size": _ints(patch_size),
                "tiling.overlap": overlap,
                "tiling.blend": blend,
                "tiling.block_size": _ints(block_size),
                "execution.batch_size": batch_size,
                "execution.device": device,
                "execution.tta": tta,
                "outputs.min_object_size": min_object_size,
                "execution.workers": workers,
                "execution.scheduler": scheduler,
                "outputs.overwrite": overwrite,
                "outputs.keep_work": keep_work,
            },
        )
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        ) as bar:
            import time

            def factory(uri: str, _: int) -> Any:
                task = bar.add_task(Path(uri.rstrip("/")).name[:40], total=None, rate="")
                start = time.perf_counter()

                def tick(done: int, total: int) -> None:
                    elapsed = max(time.perf_counter() - start, 1e-6)
                    bar.update(task, completed=done, total=total, rate=f"{done / elapsed:.2f} blocks/s")

                return tick

            job = run_bucket_job if output.startswith("s3://") else run_folder_job
            summary = job(cfg, progress=factory, debug=_debug)
            results = summary.results
    except TilewiseError as exc:
        raise _fail(exc) from None
    table = Table(title="tilewise run")
    for col in ("scene", "status", "seconds", "windows", "outputs / reason"):
        table.add_column(col)
    for r in results:
        colour = {"ok": "green", "skipped": "yellow"}.get(r.status, "red")
        detail = r.reason or str(Path(r.outputs.get("labels", "")).name)
        table.add_row(r.stem, f"[{colour}]{r.status}[/{colour}]", f"{r.seconds:.1f}", str(r.windows), detail)
    out.print(table)
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        console.print(f"[red]failed:[/red] {r.reason}", highlight=False, soft_wrap=True)
    if not results and summary.unchanged:  # a bucket with nothing new since the last run
        console.print(
            f"nothing new: {summary.unchanged} scene(s) already processed with this bundle and config"
        )
        raise typer.Exit(0)
    if not results:
        console.print("[yellow]no scenes found[/yellow]")
        raise typer.Exit(3)
    raise typer.Exit(1 if failed else 0)


@app.command()
def plan(
    input: Input,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    patch_size: Annotated[str | None, typer.Option()] = None,
    overlap: Annotated[float | None, typer.Option()] = None,
    block_size: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Dry run: the scenes, their window grid and blocks, and a memory estimate. Computes nothing."""
    from models.bundle import load_bundle
    from pipeline.core.tiling import BlockPlan
    from pipeline.execution.preprocess import Preprocessor
    from pipeline.job.discover import discover
    from pipeline.job.scene_job import open_options, plan_scene

    try:
        cfg = _config(
            config,
            input=input,
            model=model,
            **{
                "tiling.patch_size": _ints(patch_size),
                "tiling.overlap": overlap,
                "tiling.block_size": _ints(block_size),
            },
        )
        if not cfg.model:
            raise typer.BadParameter("--model is required")
        bundle = load_bundle(cfg.model)
        table = Table(title=f"plan with {bundle.config.name}")
        for col in ("scene", "shape", "patch", "windows", "blocks", "block", "est. MB/worker", "note"):
            table.add_column(col)
        for source in discover(cfg.input):
            try:
                scene = open_options(source, bundle, Path("/tmp")).open()
                Preprocessor.from_bundle(bundle, scene)
                roi, ovl, block = plan_scene(scene, bundle, cfg)
                p = BlockPlan.build(scene.shape[1:], roi, ovl, block)
                footprint = 1
                for b, r in zip(block, roi, strict=True):
                    footprint *= b + r
                mb = footprint * 4 * (bundle.num_classes + 1 + scene.shape[0]) / 2**20
                table.add_row(
                    source.uri,
                    "x".join(map(str, scene.shape)),
                    "x".join(map(str, roi)),
                    str(p.window_count),
                    str(int(__import__("math").prod(p.grid_shape))),
                    "x".join(map(str, block)),
                    f"{mb:.0f}",
                    "",
                )
                scene.close()
            except TilewiseError as exc:
                table.add_row(source.uri, "", "", "", "", "", "", f"[red]{exc}[/red]")
        out.print(table)
    except TilewiseError as exc:
        raise _fail(exc) from None


@app.command()
def info(path: Annotated[str, typer.Argument(help="A scene file or URL.")]) -> None:
    """Print what the reader sees: shape, dtype, georeferencing or voxel grid, nodata."""
    from pipeline.job.discover import discover

    try:
        for source in discover(path):
            scene = source.open()
            table = Table(title=source.uri, show_header=False)
            table.add_row("reader", source.kind)
            table.add_row("shape (C, *spatial)", str(tuple(scene.shape)))
            table.add_row("dtype", str(scene.dtype))
            for key, value in vars(scene.meta or {}).items() if scene.meta is not None else []:
                if key == "header":
                    continue
                text = str(value)
                table.add_row(key, text if len(text) < 300 else text[:300] + "…")
            out.print(table)
            scene.close()
    except TilewiseError as exc:
        raise _fail(exc) from None


app.command("serve")(serve_cmd)
app.command("train")(train_cmd)
app.command("evaluate")(evaluate_cmd)
