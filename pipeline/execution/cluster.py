"""Where a job's Dask workers come from: an existing scheduler (``tcp://`` or ``tls://``), or worker
processes started here on 127.0.0.1, with the environment and quiet event loops they need.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from pipeline.errors import ConfigError, ExecutionError

TLS_NEEDS = (
    "a tls:// scheduler needs the cluster's CA and a client certificate and key: set "
    "distributed.comm.tls.ca-file, .client.cert and .client.key in Dask's config, or "
    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT and "
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"
)


def connect(scheduler: str) -> Any:
    """A client of an existing cluster. ``tls://`` uses Dask's own ``Security``, read from Dask's
    config (and so from ``DASK_DISTRIBUTED__COMM__TLS__*``): the scheduler checks our certificate and
    we check its, so neither side talks to a stranger. Failing to connect is one line, not a traceback."""
    from distributed import Client
    from distributed.security import Security

    security = Security()
    if scheduler.startswith("tls://") and not (security.tls_ca_file and security.tls_client_cert):
        raise ConfigError(TLS_NEEDS, path=scheduler)
    try:
        return Client(scheduler, timeout="30s", security=security)
    except (OSError, TimeoutError) as exc:  # refused, unreachable, or a TLS handshake that failed
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise ExecutionError(f"cannot connect to the Dask scheduler: {text}", path=scheduler) from None


def worker_environ() -> dict[str, str]:
    """Environment set before a worker process starts: Dask's own, plus ``MALLOC_ARENA_MAX=2``.

    glibc reads the arena limit once. By the time the engine's ``tune_malloc`` runs in a worker,
    Dask's threads already own several arenas, and blocks read by the prefetch thread and freed by the
    task thread fragment them: per-worker RSS crept up with the number of blocks. ``dask worker``
    processes started by hand need the same variable (docker/compose.yaml sets it).
    """
    import dask

    env = {k: str(v) for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()}
    if os.environ.get("TILEWISE_MALLOC", "").lower() != "default":
        env["MALLOC_ARENA_MAX"] = "2"
    return env


# Every scheduler, nanny and worker event loop wakes every 20 ms only to notice if it was blocked (a
# warning after 3 s): with the system monitor, 7-8 % of a core for an idle 2-worker cluster, taken from
# the model once every core runs one. 200 ms still catches a 3 s stall; it measured ~2 %.
QUIET_EVENT_LOOPS = {
    "distributed.admin.tick.interval": "200ms",
    "distributed.admin.system-monitor.interval": "2s",
}


def local_cluster(workers: int, threads_per_worker: int = 1, device: str = "auto") -> Any:
    """Worker processes on 127.0.0.1 (dashboard on loopback too); one per GPU with dask-cuda."""
    import dask
    from distributed import LocalCluster

    common: dict[str, Any] = {
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
        "threads_per_worker": threads_per_worker,
    }
    settings = {
        "distributed.nanny.pre-spawn-environ": worker_environ(),
        # the dashboard's statistical profiler walks the task thread's stack every 10 ms: 1-2 % of a
        # core on our long model-bound tasks; every 100 ms still fills its profile page
        "distributed.worker.profile.interval": "100ms",
        **QUIET_EVENT_LOOPS,
    }
    with dask.config.set(settings):
        if device in ("cuda", "auto") and _cuda_available():
            with contextlib.suppress(ImportError):  # no dask-cuda: plain worker processes
                from dask_cuda import LocalCUDACluster

                return LocalCUDACluster(resources={"GPU": 1}, **common)
        return LocalCluster(n_workers=workers, processes=True, **common)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
