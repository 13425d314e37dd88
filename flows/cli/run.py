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
from flows.cli.options import band_map, int_list, model_options
from pipeline.errors import TilewiseError

Input = Annotated[str, typer.Argument(help="Scene file, folder, glob or URL.")]
Output = Annotated[str, typer.Argument(help="Output folder.")]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Model bundle folder.")]
TrustCodeOpt = Annotated[
    bool, typer.Option("--trust-code", help="Evaluate $ expressions of a MONAI bundle config (Python code).")
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML job config (configs/).")]
BandsOpt = Annotated[
    str | None,
    typer.Option(help="STAC input: bundle channel to asset key or band name, e.g. B08=nir,B04=red"),
]


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


def _shown(path: str) -> str:
    """An output as the user can find it: relative to here (mirrored subfolders included), or its URL."""
    if not path or "://" in path:
        return path
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


STAGES = ("open", "read", "preprocess", "model", "blend", "write_blocks", "merge_seams", "clean_components",
          "labels", "probabilities", "polygons", "quicklook")  # fmt: skip


def _stage_line(timings: dict[str, float]) -> str:
    """``open 0.41 s · read 0.12 s · ...`` in pipeline order, stages that ran only."""
    parts = [
        f"{name.replace('_', ' ')} {timings[name + '_s']:.2f} s" for name in STAGES if name + "_s" in timings
    ]
    return " · ".join(parts)


def _report(summary: Any, console: Console, out: Console) -> int:
    """Print the per-scene table and failures; the exit code: 0 all ok, 1 any failed, 3 nothing found."""
    results = summary.results
    table = Table(title="tilewise run")
    for col in ("scene", "status", "seconds", "windows", "outputs / reason"):
        table.add_column(col, overflow="fold")
    for r in results:
        colour = {"ok": "green", "skipped": "yellow"}.get(r.status, "red")
        detail = Text(r.reason or _shown(r.outputs.get("labels", "")))
        table.add_row(r.stem, f"[{colour}]{r.status}[/{colour}]", f"{r.seconds:.1f}", str(r.windows), detail)
    out.print(table)
    for r in results:  # where each scene spent its time (report: timings_s)
        report = getattr(r, "report", None)
        stages = _stage_line(report.get("timings_s", {}) if isinstance(report, dict) else {})
        if stages:
            out.print(Text(f"{r.stem}: {stages}", style="dim"), soft_wrap=True)
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
    bands: BandsOpt = None,
    format: Annotated[str | None, typer.Option(help="auto|geotiff|nifti|zarr")] = None,
    probabilities: Annotated[bool | None, typer.Option("--probabilities/--no-probabilities")] = None,
    nnunet_names: Annotated[
        bool | None, typer.Option("--nnunet-names", help="labels named CASE.nii.gz as nnU-Net names them")
    ] = None,
    polygons: Annotated[bool | None, typer.Option("--polygons/--no-polygons")] = None,
    patch_size: Annotated[str | None, typer.Option(help="e.g. 256 or 96,96,96")] = None,
    overlap: Annotated[float | None, typer.Option()] = None,
    blend: Annotated[str | None, typer.Option(help="gaussian|constant|cosine|crop")] = None,
    block_size: Annotated[str | None, typer.Option(help="block edge(s) in pixels")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    device: Annotated[str | None, typer.Option(help="auto|cpu|cuda|cuda:N")] = None,
    amp: Annotated[str | None, typer.Option(help="CUDA autocast: auto|bf16|fp16|off")] = None,
    channels_last: Annotated[bool | None, typer.Option("--channels-last", help="CUDA: NHWC layout")] = None,
    compile: Annotated[bool | None, typer.Option("--compile", help="CUDA: torch.compile the model")] = None,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="flip averaging")] = None,
    min_object_size: Annotated[int | None, typer.Option(help="merge smaller objects (pixels)")] = None,
    keep_largest: Annotated[
        bool | None,
        typer.Option("--keep-largest/--no-keep-largest", help="keep only each class's largest object"),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="local Dask worker processes (0: this process)")] = None,
    scheduler: Annotated[str | None, typer.Option(help="tcp:// or tls://host:8786 of a Dask cluster")] = None,
    wait: Annotated[bool | None, typer.Option("--wait", help="wait for scenes another run holds")] = None,
    lease_timeout: Annotated[float | None, typer.Option(help="seconds until a silent lease is stale")] = None,
    overwrite: Annotated[bool | None, typer.Option("--overwrite", help="replace existing outputs")] = None,
    keep_work: Annotated[bool | None, typer.Option("--keep-work", help="keep the work folder")] = None,
    profile: Annotated[
        Path | None,
        typer.Option(help="write a cProfile trace of this process here (snakeviz, python -m pstats)"),
    ] = None,
    prefect: Annotated[
        bool | None,
        typer.Option(
            "--prefect/--no-prefect",
            help="run as a tracked Prefect flow run (default: only when PREFECT_API_URL is set)",
        ),
    ] = None,
    folds: Annotated[
        str | None, typer.Option(help="nnU-Net folds to ensemble, e.g. 0,1 (default: all)")
    ] = None,
    checkpoint: Annotated[str | None, typer.Option(help="nnU-Net checkpoint: final|best")] = None,
    mirroring: Annotated[
        bool | None, typer.Option("--mirroring/--no-mirroring", help="nnU-Net mirroring (default: on)")
    ] = None,
    accumulate: Annotated[
        str | None,
        typer.Option(
            help="nnU-Net sums: nnunet (float16 in its tile order: its labels exactly, the default) "
            "or float32 (more precise)"
        ),
    ] = None,
    trust_pickle: Annotated[
        bool | None, typer.Option("--trust-pickle", help="allow checkpoints that need full unpickling")
    ] = None,
    trust_code: TrustCodeOpt = False,
) -> None:
    """Segment every scene under INPUT into OUTPUT (an s3:// OUTPUT runs the bucket flow once).

    A local run is a tracked Prefect flow run only with PREFECT_API_URL set or --prefect.
    """
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
                "inputs.bands": band_map(bands),
                "outputs.format": format,
                "outputs.probabilities": probabilities,
                "outputs.nnunet_names": nnunet_names,
                "outputs.polygons": polygons,
                "tiling.patch_size": int_list(patch_size, "--patch-size"),
                "tiling.overlap": overlap,
                "tiling.blend": blend,
                "tiling.block_size": int_list(block_size, "--block-size"),
                "execution.batch_size": batch_size,
                "execution.device": device,
                "execution.amp": amp,
                "execution.channels_last": channels_last,
                "execution.compile": compile,
                "execution.tta": tta,
                "outputs.min_object_size": min_object_size,
                "outputs.keep_largest": keep_largest,
                "execution.workers": workers,
                "execution.scheduler": scheduler,
                "execution.wait": wait,
                "execution.lease_timeout_s": lease_timeout,
                "outputs.overwrite": overwrite,
                "outputs.keep_work": keep_work,
                "execution.orchestrator": None if prefect is None else ("prefect" if prefect else "none"),
                "model_options": model_options(
                    folds, checkpoint, mirroring, trust_code=trust_code, accumulate=accumulate
                ),
                "trust_pickle": trust_pickle,
            },
        )
        from flows.cli.process import allow_quick_end, lean_start, settled_start
        from flows.oneoff import choose_runner, tracked

        with settled_start() as settle:  # the job's modules (torch, ...) load with the collector off
            if not tracked(cfg):
                lean_start()  # no boto3, one entry-point scan (in a process this command owns)
            job = choose_runner(cfg)
            import pipeline.job.skeleton  # noqa: F401  (torch and the block machinery, whichever runner)

            settle()
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
            rate = (TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
            profiler = None
            if profile is not None:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            try:
                with Progress(*columns, *rate, console=console, transient=False) as bar:
                    summary = job(cfg, progress=_progress_factory(bar), debug=debug)
            finally:
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(str(profile))
                    console.print(f"profile written to {profile} (python -m pstats {profile}, or snakeviz)")
    code = _report(summary, console, out)
    local = not (cfg.execution.workers or cfg.execution.scheduler)
    if local and not tracked(cfg):  # no Prefect, no Dask: every file is in place, every pool idle
        allow_quick_end()
    raise typer.Exit(code)


def plan_cmd(
    ctx: typer.Context,
    input: Input,
    model: ModelOpt = None,
    config: ConfigOpt = None,
    bands: BandsOpt = None,
    polygons: Annotated[bool | None, typer.Option("--polygons/--no-polygons")] = None,
    patch_size: Annotated[str | None, typer.Option()] = None,
    overlap: Annotated[float | None, typer.Option()] = None,
    block_size: Annotated[str | None, typer.Option()] = None,
    trust_code: TrustCodeOpt = False,
    prefect: Annotated[
        bool | None,
        typer.Option("--prefect/--no-prefect", help="plan a tracked Prefect flow run (as `run --prefect`)"),
    ] = None,
    folds: Annotated[
        str | None, typer.Option(help="nnU-Net folds to ensemble, e.g. 0,1 (default: all)")
    ] = None,
    accumulate: Annotated[str | None, typer.Option(help="nnU-Net sums: nnunet (float16) or float32")] = None,
) -> None:
    """Dry run: the scenes, their window grid and blocks, and a memory estimate. Computes nothing."""
    from flows.cli.baseline import run_baseline_mb
    from flows.oneoff import tracked
    from models.bundle.header import read_header
    from models.bundle.sources import model_kind, open_model
    from pipeline.core.tiling import BlockPlan
    from pipeline.execution.preprocess import Preprocessor
    from pipeline.job.discover import discover
    from pipeline.job.memory import plan_peak_mb, unseen_activations
    from pipeline.job.scene_job import open_options, plan_scene

    with reported(ctx):
        cfg = _config(
            config,
            input=input,
            model=model,
            **{
                "inputs.bands": band_map(bands),
                "outputs.polygons": polygons,
                "tiling.patch_size": int_list(patch_size, "--patch-size"),
                "tiling.overlap": overlap,
                "tiling.block_size": int_list(block_size, "--block-size"),
                "execution.orchestrator": None if prefect is None else ("prefect" if prefect else "none"),
                "model_options": model_options(
                    folds, None, None, trust_code=trust_code, accumulate=accumulate
                ),
            },
        )
        if not cfg.model:
            raise typer.BadParameter("--model is required")
        # what a run holds before its first block, the model included, measured once per install
        # in a child process (flows/cli/baseline.py): the plan itself loads no torch or Prefect
        if model_kind(cfg.model) == "tilewise":  # its model.yaml says all a plan needs: no torch
            bundle: Any = read_header(cfg.model)
        else:  # a model kept as its users keep it: its importer loads its framework
            bundle = open_model(cfg.model, trust_pickle=cfg.trust_pickle, options=cfg.model_options)
        baseline = run_baseline_mb(bundle, tracked=tracked(cfg))  # a plain run loads no Prefect
        note = unseen_activations(dict(bundle.config.architecture))
        out, table = Console(), Table(title=f"plan with {bundle.config.name}")
        for col in ("scene", "shape", "patch", "windows", "blocks", "block", "peak MB/worker", "note"):
            table.add_column(col, overflow="fold")  # wrap, never cut: a name must stay recognisable
        # a reader may cache a decompressed volume; a plan leaves nothing behind
        with tempfile.TemporaryDirectory(prefix="tilewise-plan-") as work:
            for source in discover(cfg.input):
                try:
                    scene = open_options(source, bundle, Path(work), cfg.inputs.bands).open()
                    try:
                        Preprocessor.from_bundle(bundle, scene)
                        roi, ovl, block = plan_scene(scene, bundle, cfg)
                        shape = scene.shape
                    finally:
                        scene.close()
                    grid = BlockPlan.build(shape[1:], roi, ovl, block, bundle.config.grid)
                    mb = plan_peak_mb(scene, bundle, cfg, roi, block, baseline_mb=baseline, overlap=ovl,
                                      light=True)  # fmt: skip
                    row = (
                        source.uri,
                        "x".join(map(str, shape)),
                        "x".join(map(str, roi)),
                        str(grid.window_count),
                        str(math.prod(grid.grid_shape)),
                        "x".join(map(str, block)),
                        f"{mb:.0f}",
                        note,
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
            table.add_column()
            table.add_column(overflow="fold")
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
