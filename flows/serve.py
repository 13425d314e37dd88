"""Serving the bucket flow on a schedule, as a deployment of a real Prefect server."""

from __future__ import annotations

from typing import Any

from flows.artifacts import artifact_key
from flows.prefect_api import prefect_api
from pipeline.errors import ConfigError
from pipeline.job.config import JobConfig


def deployment_name(config: JobConfig) -> str:
    return artifact_key("bucket", config.output or "").removeprefix("tilewise-")


def serve_bucket(
    config: JobConfig,
    *,
    cron: str | None = None,
    interval: float | None = None,
    name: str | None = None,
    limit: int = 1,
    staging_dir: str | None = None,
) -> None:
    """Serve the bucket flow as a deployment (``flow.serve``) until interrupted.

    ``limit`` caps concurrent runs of this process; the deployment's own concurrency limit (1, new
    runs cancelled while one goes) holds across every process serving it, and scene leases hold
    underneath for anything else writing to the same prefix. The job config travels as the
    deployment's parameters, so the UI shows exactly what runs.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    CANCEL_NEW = ConcurrencyLimitStrategy.CANCEL_NEW
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import EntrypointType
    from prefect.settings import PREFECT_API_URL

    from flows.bucket import bucket_flow, check_bucket_config

    if cron and interval:
        raise ConfigError("give --cron or --interval, not both")
    check_bucket_config(config)
    if cron:
        try:
            CronSchedule(cron=cron)
        except ValueError as exc:
            raise ConfigError(f"invalid cron expression {cron!r}") from exc
    if not PREFECT_API_URL.value():  # a temporary server runs no scheduler: nothing would ever run
        raise ConfigError("serving needs a Prefect server with its scheduler: run `prefect server start "
                          "--host 127.0.0.1` and set PREFECT_API_URL=http://127.0.0.1:4200/api")  # fmt: skip
    params: dict[str, Any] = {"config": config.model_dump(mode="json"), "staging_dir": staging_dir}
    with prefect_api():
        bucket_flow.serve(
            name=name or deployment_name(config),
            cron=cron,
            interval=interval,
            parameters=params,
            limit=limit,
            # the server itself never starts a second run of this deployment while one goes (a cron
            # firing during a long run is cancelled, not queued: the next firing picks up what is new)
            global_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=CANCEL_NEW),
            description=f"tilewise: segment new objects under {config.input} into {config.output}",
            tags=["tilewise", "bucket"],
            entrypoint_type=EntrypointType.MODULE_PATH,  # the installed package, wherever the cwd is
        )
