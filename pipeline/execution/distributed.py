"""The Dask executor: one scene's blocks spread over many worker processes, GPUs or machines.

Tasks carry a ``SceneTask`` (paths and numbers) and block indices; workers read their own regions,
write their own files and chunks, and return small stats. Phase-1 tasks take runs of consecutive
blocks so windows batch across block boundaries and the graph stays small (hundreds of tasks, not
millions). Seam merges run once every computed block is on disk. A worker that dies has its tasks
rescheduled by Dask; because every write is a whole file or a whole chunk renamed or overwritten by
its single owner, a retry is harmless.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import platform
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from pipeline.errors import ExecutionError, TilewiseError
from pipeline.execution.cluster import connect, local_cluster
from pipeline.execution.local import Progress, needs_computing
from pipeline.execution.tasks import SceneTask, TaskStats, compute_blocks, make_predictor, merge_block
from pipeline.execution.workstore import Index, WorkStore
from pipeline.formats.source import SceneSource

T = TypeVar("T")


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)


try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - dask is a dependency
    WorkerPlugin = object  # type: ignore[assignment,misc]


class TilewiseWorker(WorkerPlugin):  # type: ignore[misc,valid-type]
    """What one worker process holds for a job: torch threads and a small GDAL cache, the bundle's
    network (read from the bundle's path once per worker, never sent as tensors), and the scenes its
    tasks have open. Registering a plugin for another bundle replaces this one, and ``teardown``
    closes everything, so nothing outlives the job on the worker."""

    name = "tilewise"

    def __init__(
        self,
        threads: int = 1,
        bundle_path: str | None = None,
        bundle_hash: str = "",
        device: str = "cpu",
        model_options: tuple[tuple[str, Any], ...] = (),
        trust_pickle: bool = False,
    ) -> None:
        self.model_options, self.trust_pickle = model_options, trust_pickle
        self.threads, self.bundle_path, self.bundle_hash, self.device = (
            threads,
            bundle_path,
            bundle_hash,
            device,
        )
        self.model: Any = None
        self.scenes: dict[SceneSource, Any] = {}

    def setup(self, worker: Any) -> None:
        from pipeline.formats.gdal_cache import use_worker_cache

        self._lock = threading.Lock()  # made on the worker: the plugin travels pickled, a lock cannot

        _threads(self.threads)
        use_worker_cache()
        if self.bundle_path:
            from models.bundle.sources import open_model
            from pipeline.engine.predictor import resolve_device

            bundle = open_model(
                self.bundle_path, trust_pickle=self.trust_pickle, options=dict(self.model_options)
            )
            self.model = bundle.build(device=resolve_device(self.device))

    def teardown(self, worker: Any) -> None:
        for source in list(self.scenes):
            self.close_scene(source)
        self.model = None

    def scene(self, source: SceneSource) -> Any:
        """The scene, opened once on this worker for all of its tasks."""
        with self._lock:
            if source not in self.scenes:
                self.scenes[source] = source.open()
            return self.scenes[source]

    def close_scene(self, source: SceneSource) -> None:
        with self._lock:
            scene = self.scenes.pop(source, None)
        if scene is not None:
            scene.close()


def _plugin(task: SceneTask) -> TilewiseWorker:
    from distributed import get_worker

    plugin = get_worker().plugins.get(TilewiseWorker.name)
    if not isinstance(plugin, TilewiseWorker) or plugin.bundle_hash != task.bundle_hash:
        raise ExecutionError("this worker holds no model for the scene's bundle", path=task.bundle_path)
    return plugin


def _close_scene_on_worker(source: SceneSource, dask_worker: Any = None) -> None:
    """Run by ``client.run`` on every worker (which passes ``dask_worker``) once a scene is done."""
    plugin = dask_worker.plugins.get(TilewiseWorker.name) if dask_worker is not None else None
    if isinstance(plugin, TilewiseWorker):
        plugin.close_scene(source)


@dataclass
class TaskFailure:
    """A task's exception, sent back as plain data: tracebacks never cross the wire (some cannot)."""

    kind: str
    message: str


def _guarded(fn: Any) -> Any:
    @functools.wraps(fn)  # keeps the qualified name, so tasks pickle by reference, not by value
    def run(task: SceneTask, indices: list[Index]) -> Any:
        try:
            return fn(task, indices)
        except TilewiseError as exc:
            return TaskFailure(type(exc).__name__, str(exc))
        except Exception as exc:
            return TaskFailure(type(exc).__name__, f"{type(exc).__name__} on a worker: {exc}")

    return run


@_guarded
def _compute_task(task: SceneTask, indices: list[Index]) -> TaskStats:
    plugin = _plugin(task)
    stats = compute_blocks(
        task, indices, scene=plugin.scene(task.source), predict=make_predictor(task, plugin.model)
    )
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    stats.worker = f"{platform.node()}:{os.getpid()}" + (f":gpu{gpu}" if gpu else "")
    return stats


@_guarded
def _merge_task(task: SceneTask, indices: list[Index]) -> int:
    store = WorkStore(task.work_dir)
    for index in indices:
        merge_block(task, index, store)
    return len(indices)


def _calls(fn: Any, calls: list[tuple[Any, ...]]) -> Any:
    """Run on a worker: a group of ``DaskExecutor.map``'s calls, failures sent back as data."""
    try:
        return [fn(*args) for args in calls]
    except TilewiseError as exc:
        return TaskFailure(type(exc).__name__, str(exc))
    except Exception as exc:
        return TaskFailure(type(exc).__name__, f"{type(exc).__name__} on a worker: {exc}")


def _result(fut: Any, uri: str) -> Any:
    value = fut.result()
    if isinstance(value, TaskFailure):
        raise ExecutionError(value.message, path=None if uri in value.message else uri)
    return value


def chunks(items: list[T], workers: int, per_worker: int = 4, cap: int = 64) -> list[list[T]]:
    """Runs of consecutive blocks: about ``per_worker`` tasks per worker, at most ``cap`` blocks each."""
    if not items:
        return []
    size = max(1, min(cap, math.ceil(len(items) / max(1, workers * per_worker))))
    return [items[i : i + size] for i in range(0, len(items), size)]


class DaskExecutor:
    def __init__(self, client: Any, *, threads: int = 1, device: str = "auto") -> None:
        self.client = client
        self.threads, self.device = threads, device
        self.tasks_submitted = 0
        self._bundle = ""

    @property
    def gpu(self) -> bool:
        """Tasks ask for a GPU only when the workers offer one (else they would wait forever)."""
        workers = self.client.scheduler_info().get("workers", {}).values()
        return any("GPU" in (w.get("resources") or {}) for w in workers)

    def _load_model_on_workers(self, task: SceneTask) -> None:
        if self._bundle != task.bundle_hash:
            plugin = TilewiseWorker(
                self.threads,
                task.bundle_path,
                task.bundle_hash,
                task.device,
                task.model_options,
                task.trust_pickle,
            )
            self.client.register_plugin(plugin)
            self._bundle = task.bundle_hash

    def map(self, fn: Any, calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        """``fn(*args)`` for each of ``calls``, in order, on the workers (a few groups per worker):
        per-block post-processing runs where the blocks are, and only its small results come back."""
        from distributed import wait

        if not calls:
            return []
        groups = chunks(list(calls), self.workers)
        futures = [self.client.submit(_calls, fn, g, pure=False, retries=1) for g in groups]
        self.tasks_submitted += len(futures)
        wait(futures)
        out: list[Any] = []
        for fut in futures:
            value = fut.result()
            if isinstance(value, TaskFailure):
                raise ExecutionError(value.message)
            out.extend(value)
            fut.release()
        return out

    @property
    def workers(self) -> int:
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def map_items(self, fn: Any, items: Any) -> list[Any]:
        """``fn(item)`` for each small item on the workers, one task each (the outputs' overview tiles
        and polygon strips: paths and boxes in), retrying an item whose worker died."""
        return list(self.client.gather(self.client.map(fn, list(items), pure=False, retries=1)))

    def run(self, task: SceneTask, progress: Progress | None = None, *, scene: Any = None) -> TaskStats:
        """Run the scene's blocks on the workers (each opens the scene itself: ``scene`` stays here),
        then close the scene on every worker."""
        try:
            return self._run(task, progress)
        finally:
            with contextlib.suppress(Exception):  # a cluster going away has closed it already
                self.client.run(_close_scene_on_worker, task.source)

    def _run(self, task: SceneTask, progress: Progress | None) -> TaskStats:
        from distributed import as_completed
        from distributed.client import FutureCancelledError
        from distributed.scheduler import KilledWorker

        plan, store = task.plan, WorkStore(task.work_dir)
        self._load_model_on_workers(task)
        order = [b.index for b in plan.blocks()]
        resources = {"GPU": 1} if self.gpu else None
        todo = [i for i in order if needs_computing(plan, store, i)]
        total = len(order)
        stats = TaskStats()
        ran_on: set[str] = set()
        try:
            futures = [
                self.client.submit(_compute_task, task, group, pure=False, resources=resources, retries=1)
                for group in chunks(todo, self.workers)
            ]
            self.tasks_submitted += len(futures)
            for fut in as_completed(futures):
                s: TaskStats = _result(fut, task.source.uri)
                stats.blocks += s.blocks
                stats.windows += s.windows
                stats.skipped += s.skipped
                stats.read_s += s.read_s
                stats.compute_s += s.compute_s
                for name, seconds in s.stages.items():  # summed over workers
                    stats.stages[name] = stats.stages.get(name, 0.0) + seconds
                ran_on.add(s.worker)
            pending = [i for i in order if not store.is_merged(i)]
            merged = total - len(pending)
            if progress:
                progress(merged, total)
            merging = time.perf_counter()
            merges = [
                self.client.submit(_merge_task, task, group, pure=False, retries=1)
                for group in chunks(pending, self.workers, per_worker=2)
            ]
            self.tasks_submitted += len(merges)
            for fut in as_completed(merges):
                merged += _result(fut, task.source.uri)
                if progress:
                    progress(merged, total)
            stats.stages["merge_seams"] = time.perf_counter() - merging  # wall time of the merge tasks
        except KilledWorker as exc:
            raise ExecutionError(
                f"a block task of this scene kept killing workers ({exc}); the scene is abandoned",
                path=task.source.uri,
            ) from exc
        except FutureCancelledError as exc:
            raise ExecutionError("the cluster cancelled this scene's tasks", path=task.source.uri) from exc
        stats.merged = merged
        stats.extra = {
            "dask_tasks": len(futures) + len(merges),
            "workers": self.workers,
            "ran_on": sorted(ran_on),
        }
        return stats


@contextmanager
def dask_executor(
    *, workers: int = 1, scheduler: str | None = None, threads_per_worker: int = 1, device: str = "auto"
) -> Iterator[DaskExecutor]:
    """A client to the given scheduler, or a LocalCluster of worker processes on 127.0.0.1.

    With CUDA and dask-cuda installed, ``LocalCUDACluster`` starts one worker per GPU, each seeing only
    its own device through CUDA_VISIBLE_DEVICES.
    """
    from distributed import Client

    if scheduler:
        with connect(scheduler) as client:
            yield DaskExecutor(client, threads=threads_per_worker, device=device)
        return
    cluster = local_cluster(workers or 1, threads_per_worker, device)
    with cluster, Client(cluster) as client:
        yield DaskExecutor(client, threads=threads_per_worker, device=device)
