"""``tilewise serve``: the bucket flow as a scheduled Prefect deployment.

Prefect loads inside the command, so the other ``tilewise`` commands stay fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli.errors import reported
from pipeline.errors import ConfigError


def serve_cmd(
    ctx: typer.Context,
    config: Annotated[
        Path, typer.Option("--config", "-c", help="YAML bucket job (see configs/bucket-job.yaml).")
    ],
    cron: Annotated[str | None, typer.Option(help='Cron schedule, e.g. "*/15 * * * *".')] = None,
    interval: Annotated[float | None, typer.Option(help="Seconds between runs (instead of --cron).")] = None,
    name: Annotated[
        str | None, typer.Option(help="Deployment name (default: from the output prefix).")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model bundle folder.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Runs at once in this process (1: one writer).")] = 1,
    staging_dir: Annotated[
        str | None,
        typer.Option(help="Local folder for outputs before upload (shared with remote Dask workers)."),
    ] = None,
) -> None:
    """Serve the bucket flow on a schedule: each run segments only new or changed objects.

    Needs PREFECT_API_URL: a Prefect server runs the schedule (`prefect server start --host 127.0.0.1`).
    Ctrl-C stops serving and pauses the schedule.
    """
    from pipeline.job.config import load_config

    with reported(ctx):
        job = load_config(config, {"model": model})
        if interval is not None and interval <= 0:
            raise ConfigError("--interval must be positive")
        from flows.prefect_api import prefect_settings_checked

        with prefect_settings_checked():
            from flows.serve import serve_bucket
        serve_bucket(job, cron=cron, interval=interval, name=name, limit=limit, staging_dir=staging_dir)
