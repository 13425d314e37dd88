"""A real Dask cluster, started with the same commands as the Docker images: `dask scheduler` and two
`dask worker` processes on 127.0.0.1. Output must be byte-identical to the local executor's, also when
a worker is SIGKILLed mid-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from distributed import Client

from pipeline.job.config import load_config
from pipeline.job.skeleton import run_job

BIN = Path(sys.executable).parent
COMPOSE = Path(__file__).resolve().parents[3] / "docker" / "compose.yaml"
S2 = "geo/derived/S2A_T33UUU_20170216_L1C_B02-B03-B04-B08_10m.tif"


POISON = """
import os
import pipeline.execution.distributed as d

if not hasattr(d, "_real_compute_blocks"):  # a preload may run more than once per process
    d._real_compute_blocks = d.compute_blocks

    def compute_blocks(task, indices, **kw):
        if "poison" in task.source.uri:
            os._exit(13)  # a scene whose blocks crash the worker process every time
        return d._real_compute_blocks(task, indices, **kw)

    d.compute_blocks = compute_blocks
"""


def compose_environ() -> dict[str, str]:
    """The fixed environment docker/compose.yaml gives every tilewise container (not the host's secrets)."""
    compose = yaml.safe_load(COMPOSE.read_text())
    env = compose["x-common"]["environment"]
    return {k: v for k, v in env.items() if "${" not in v}


def _start_cluster(tmp: Path, preload: Path | None = None):
    """`dask scheduler` + two `dask worker` processes on 127.0.0.1 (the compose file's commands)."""
    sched_file = tmp / "scheduler.json"
    env = {
        **os.environ,
        **compose_environ(),
        "DASK_TEMPORARY_DIRECTORY": str(tmp / "dask"),
        "OMP_NUM_THREADS": "1",
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1",
    }
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    loopback = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    procs = [
        subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--port", "0", "--scheduler-file", str(sched_file), *loopback],
            **quiet,
        )
    ]
    deadline = time.time() + 60
    while not sched_file.exists() and time.time() < deadline:
        time.sleep(0.2)
    extra = ["--preload", str(preload)] if preload else []
    worker = [str(BIN / "dask"), "worker", "--scheduler-file", str(sched_file), "--nthreads", "1"]
    for _ in range(2):
        procs.append(subprocess.Popen([*worker, *loopback, "--memory-limit", "4GiB", *extra], **quiet))
    client = Client(scheduler_file=str(sched_file), timeout="60s")
    client.wait_for_workers(2, timeout=90)
    return procs, client


def _stop(procs, client) -> None:
    client.close()
    for p in procs[::-1]:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    procs, client = _start_cluster(tmp_path_factory.mktemp("cluster"))
    yield client, client.scheduler.address
    _stop(procs, client)


def _run(src: Path, out: Path, bundle: Path, **over) -> object:
    cfg = load_config(
        None,
        {
            "input": str(src),
            "output": str(out),
            "model": str(bundle),
            "tiling.block_size": [128],
            "outputs.quicklook": False,
            **over,
        },
    )
    (result,) = run_job(cfg)
    assert result.status == "ok", result.reason
    return result


def test_cluster_output_is_byte_identical_to_local(tmp_path, data, bundle_factory, cluster):
    client, address = cluster
    bundle = bundle_factory(2, 4, ["land", "water"], 64, [8, 16])
    local = _run(data / S2, tmp_path / "local", bundle, **{"outputs.probabilities": True})
    dist = _run(
        data / S2,
        tmp_path / "dask",
        bundle,
        **{"outputs.probabilities": True, "execution.scheduler": address},
    )
    for key in ("labels", "probabilities"):
        assert Path(local.outputs[key]).read_bytes() == Path(dist.outputs[key]).read_bytes()
    # both workers hold the model, loaded by the worker plugin (by path, not tensors), and no scene
    # stays open on a worker once its job is done
    held = client.run(
        lambda dask_worker: (lambda p: (p.model is not None, len(p.scenes)))(dask_worker.plugins["tilewise"])
    )
    assert len(held) == 2 and all(v == (True, 0) for v in held.values()), held


def test_worker_sigkill_mid_run_still_byte_identical(tmp_path, data, bundle_factory, cluster):
    client, address = cluster
    bundle = bundle_factory(2, 4, ["land", "water"], 64, [32, 64, 128])
    local = _run(data / S2, tmp_path / "local", bundle)
    out = tmp_path / "dask"
    box: dict[str, object] = {}

    def job() -> None:
        try:
            box["result"] = _run(
                data / S2, out, bundle, **{"execution.scheduler": address, "outputs.keep_work": True}
            )
        except BaseException as exc:  # surfaced below
            box["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.time() + 120
    while time.time() < deadline:
        blocks = list(out.glob(".tilewise-work/*/blocks/*.npz"))
        if len(blocks) >= 6:
            break
        time.sleep(0.02)
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=300)
    assert "error" not in box, box.get("error")
    result = box["result"]
    assert Path(result.outputs["labels"]).read_bytes() == Path(local.outputs["labels"]).read_bytes()
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker


def test_scene_that_keeps_killing_workers_fails_alone(tmp_path, data, bundle_factory):
    preload = tmp_path / "poison_preload.py"
    preload.write_text(POISON)
    procs, client = _start_cluster(tmp_path / "c", preload)
    try:
        folder = tmp_path / "in"
        folder.mkdir()
        tenth = (data / "geo/rasterio/rgb-byte-tenth.tif").read_bytes()
        (folder / "good.tif").write_bytes(tenth)
        (folder / "poison.tif").write_bytes(tenth)
        bundle = bundle_factory(2, 3, ["a", "b"], 32, [4, 8])
        cfg = load_config(
            None,
            {
                "input": str(folder),
                "output": str(tmp_path / "out"),
                "model": str(bundle),
                "execution.scheduler": client.scheduler.address,
            },
        )
        results = {r.stem: r for r in run_job(cfg)}
        assert results["good"].status == "ok", results["good"].reason
        assert results["poison"].status == "failed"
        assert "poison.tif" in results["poison"].reason and "killing workers" in results["poison"].reason
        assert not (tmp_path / "out" / "poison_labels.tif").exists()
    finally:
        _stop(procs, client)


def test_many_small_scenes_spread_over_local_cluster_workers(tmp_path, data, bundle_factory):
    """`--workers 2` starts a LocalCluster on loopback; several scenes run at once on both workers."""
    folder = tmp_path / "in"
    folder.mkdir()
    tenth = (data / "geo/rasterio/rgb-byte-tenth.tif").read_bytes()
    for i in range(6):
        (folder / f"scene{i}.tif").write_bytes(tenth)
    bundle = bundle_factory(2, 3, ["a", "b"], 32, [4, 8])
    cfg = load_config(
        None,
        {"input": str(folder), "output": str(tmp_path / "out"), "model": str(bundle), "execution.workers": 2},
    )
    results = run_job(cfg)
    assert [r.status for r in results] == ["ok"] * 6
    ran_on = {w for r in results for w in r.report["execution"]["ran_on"]}
    assert len(ran_on) == 2
    first = (tmp_path / "out" / "scene0_labels.tif").read_bytes()
    assert all((tmp_path / "out" / f"scene{i}_labels.tif").read_bytes() == first for i in range(6))


def test_local_cluster_workers_start_with_two_malloc_arenas_small_caches_and_a_light_profiler(monkeypatch):
    """glibc reads MALLOC_ARENA_MAX once, so it must be in a worker's environment before it starts."""
    from pipeline.execution.cluster import local_cluster, worker_environ
    from pipeline.execution.distributed import TilewiseWorker

    monkeypatch.setenv("TILEWISE_MALLOC", "default")
    assert "MALLOC_ARENA_MAX" not in worker_environ()
    monkeypatch.delenv("TILEWISE_MALLOC")
    assert worker_environ()["OMP_NUM_THREADS"] == "1"  # Dask's own pre-spawn settings are kept

    def probe() -> tuple[str | None, list[str], int]:
        import dask
        from rasterio.env import get_gdal_config

        keys = ["distributed.worker.profile.interval", "distributed.admin.tick.interval"]
        intervals = [dask.config.get(k) for k in keys]
        return os.environ.get("MALLOC_ARENA_MAX"), intervals, int(get_gdal_config("GDAL_CACHEMAX"))

    with local_cluster(1, device="cpu") as cluster, Client(cluster) as client:
        client.register_plugin(TilewiseWorker(threads=1))
        assert list(client.run(probe).values()) == [("2", ["100ms", "200ms"], 16 * 2**20)]
        assert all(w["host"] == "127.0.0.1" for w in client.scheduler_info()["workers"].values())


def test_compose_file_gives_every_tilewise_service_the_worker_environment():
    """Compose merges ``<<: *common`` silently and ignores nothing: a variable indented one level too
    little becomes an unknown service key and the whole file is refused."""
    compose = yaml.safe_load(COMPOSE.read_text())
    allowed = {"image", "build", "entrypoint", "command", "ports", "depends_on", "deploy", "profiles",
               "environment", "volumes", "healthcheck", "restart"}  # fmt: skip
    assert compose_environ()["MALLOC_ARENA_MAX"] == "2"
    for name, service in compose["services"].items():
        assert set(service) <= allowed, f"{name}: unknown keys {set(service) - allowed}"
        env = service.get("environment", {})
        assert all(isinstance(v, str) for v in env.values()), name
        if service["image"].startswith("tilewise") and name != "prefect-server":
            assert env.get("MALLOC_ARENA_MAX") == "2", name


def test_output_tiles_and_polygon_strips_run_on_the_workers(tmp_path, data, cluster):
    """Overview tiles and polygon strips go to the workers as paths and boxes (the Zarr array travels
    by its path): same levels and the same features, in the same order, as in this process."""
    import fiona
    import numpy as np
    import rasterio
    import zarr

    from pipeline.execution.distributed import DaskExecutor
    from pipeline.execution.pyramid import build_label_pyramid
    from pipeline.execution.workstore import gdal_zarr
    from pipeline.formats.geotiff import open_geotiff
    from pipeline.formats.vector import write_polygons

    client, _ = cluster
    src = data / "geo/derived/S2A_T33UUU_20170216_osm_landcover_10m.tif"
    with rasterio.open(src) as ds:
        cover = ds.read(1)
    labels = gdal_zarr(cover.shape, (128, 256), tmp_path / "labels.zarr")
    labels[...] = cover
    workers = DaskExecutor(client)
    here = build_label_pyramid(labels, tmp_path / "here", 255, lambda fn, items: [fn(i) for i in items])
    there = build_label_pyramid(labels, tmp_path / "there", 255, workers.map_items)
    for a, b in zip(here, there, strict=True):
        assert np.array_equal(
            zarr.open_array(store=str(a), mode="r")[...], zarr.open_array(store=str(b), mode="r")[...]
        )
    kw = {"meta": open_geotiff(str(src)).meta, "class_names": [f"c{i}" for i in range(9)], "nodata": 0}
    n_here = write_polygons(labels, tmp_path / "here.gpkg", block_rows=70, **kw)
    n_there = write_polygons(labels, tmp_path / "there.gpkg", block_rows=70, mapper=workers.map_items, **kw)

    def features(path):
        with fiona.open(path, layer="classes") as layer:
            return [(f.properties["class_id"], f.geometry) for f in layer]

    assert n_here == n_there > 100
    assert features(tmp_path / "here.gpkg") == features(tmp_path / "there.gpkg")
