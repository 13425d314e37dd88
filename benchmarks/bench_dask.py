"""Issue-4 figures: Dask scaling (2 workers x 1 thread vs 1 x 1), task count, scheduler overhead per task,
and per-worker peak RSS as the scene grows.

``scaling`` times whole jobs (``run_job``: bundle load, blocks, COG finalise, report) on warm clusters,
after one small warm-up scene each; the warm-up seconds are printed too.

    .venv/bin/python benchmarks/bench_dask.py scaling [--edge 8192] [--pairs 2]
    .venv/bin/python benchmarks/bench_dask.py memory  [--edges 4096 16384]
    .venv/bin/python benchmarks/bench_dask.py ceiling [--seconds 30]

``ceiling`` is the most any scheduler could get from this machine: the scaling benchmark's model,
one torch thread, run back to back in one process alone and then in two processes at once (no Dask,
no I/O). Two workers cannot beat (windows/s of the pair) / (windows/s alone).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, make_bundle, make_scene

OUT = ROOT / "benchmarks" / "out"


def _cluster(workers: int):
    """The same LocalCluster ``tilewise run --workers N`` starts (one torch thread per worker)."""
    from distributed import Client

    from pipeline.execution.cluster import local_cluster

    os.environ.setdefault("DASK_TEMPORARY_DIRECTORY", str(OUT / "dask"))
    cluster = local_cluster(workers, threads_per_worker=1, device="cpu")
    return cluster, Client(cluster)


def _job(scene: Path, bundle: Path, address: str, out: Path) -> tuple[float, dict]:
    from pipeline.job.config import load_config
    from pipeline.job.skeleton import run_job

    cfg = load_config(
        None,
        {
            "input": str(scene),
            "output": str(out),
            "model": str(bundle),
            "execution.scheduler": address,
            "outputs.overwrite": True,
            "outputs.quicklook": False,
            "execution.batch_size": 4,
        },
    )
    t = time.perf_counter()
    (res,) = run_job(cfg)
    assert res.status == "ok", res.reason
    return time.perf_counter() - t, res.report


def _overhead_per_task(client, n: int = 2000) -> float:
    def noop(i: int) -> int:
        return i

    client.gather(client.map(noop, range(50), pure=False))  # warm
    t = time.perf_counter()
    client.gather(client.map(noop, range(n), pure=False))
    return (time.perf_counter() - t) / n


def scaling(edge: int, pairs: int) -> None:
    scene = make_scene(OUT / f"scene-{edge}.tif", edge)
    bundle = make_bundle(OUT / "bundle-dask", 3, [16, 32, 64])
    clusters = {w: _cluster(w) for w in (1, 2)}
    try:
        # each fresh worker imports torch and builds the model on its first task (~4 s, once per
        # cluster, not per scene): a small scene first, so the pairs time steady-state scenes
        warm = make_scene(OUT / "scene-1024.tif", 1024)
        warmup_s = {}
        for w, (cluster, _) in clusters.items():
            seconds, _ = _job(warm, bundle, cluster.scheduler_address, OUT / "warm")
            warmup_s[f"{w}_workers"] = round(seconds, 2)
        print(json.dumps({"warmup_s": warmup_s}), flush=True)
        times: dict[int, list[float]] = {1: [], 2: []}
        reports: dict[int, dict] = {}
        for i in range(pairs):
            for w in (1, 2) if i % 2 == 0 else (2, 1):
                cluster, client = clusters[w]
                seconds, reports[w] = _job(scene, bundle, cluster.scheduler_address, OUT / f"dask-{w}")
                times[w].append(seconds)
                timings = reports[w]["timings_s"]
                row = {"pair": i, "workers": w, "seconds": round(seconds, 2), **timings}
                print(json.dumps(row), flush=True)
        speedups = [a / b for a, b in zip(times[1], times[2])]
        overhead = _overhead_per_task(clusters[2][1])
        report = reports[2]
        blocks = report["plan"]["blocks"]
        tasks = {f"{w}_workers": r["execution"]["dask_tasks"] for w, r in reports.items()}
        print(
            json.dumps(
                {
                    "edge": edge,
                    "windows": report["windows_computed"],
                    "blocks": blocks,
                    "tasks": tasks,
                    "one_worker_s": [round(t, 2) for t in times[1]],
                    "two_workers_s": [round(t, 2) for t in times[2]],
                    "median_speedup": round(statistics.median(speedups), 3),
                    "scheduler_overhead_ms_per_task": round(overhead * 1000, 3),
                }
            )
        )
    finally:
        for cluster, client in clusters.values():
            client.close()
            cluster.close()


def forward_rate(seconds: float) -> None:
    """Windows per second of the scaling bundle's model, one torch thread, batches of 4 (one process)."""
    import numpy as np
    import torch

    from models.bundle import load_bundle
    from pipeline.engine.predictor import Predictor

    torch.set_num_threads(1)
    bundle = load_bundle(make_bundle(OUT / "bundle-dask", 3, [16, 32, 64]))
    predict = Predictor(bundle.build())
    batch = np.random.default_rng(0).normal(size=(4, 3, 256, 256)).astype(np.float32)
    predict(batch)
    windows, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        predict(batch)
        windows += len(batch)
    print(json.dumps({"windows_per_s": windows / (time.perf_counter() - start)}), flush=True)


def ceiling(seconds: float) -> None:
    import subprocess

    from pipeline.execution.cluster import worker_environ

    make_bundle(OUT / "bundle-dask", 3, [16, 32, 64])
    env = {**os.environ, **worker_environ()}
    cmd = [sys.executable, __file__, "forward-rate", "--seconds", str(seconds)]

    def rates(n: int) -> list[float]:
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(n)]
        return [json.loads(p.communicate()[0].strip().splitlines()[-1])["windows_per_s"] for p in procs]

    (alone,) = rates(1)
    pair = rates(2)
    print(
        json.dumps(
            {
                "alone_windows_per_s": round(alone, 2),
                "pair_windows_per_s": [round(r, 2) for r in pair],
                "two_process_ceiling": round(sum(pair) / alone, 3),
            }
        )
    )


def memory(edges: list[int]) -> None:
    bundle = make_bundle(OUT / "bundle-mem", 3, [8, 16, 32])
    peaks = {}
    for edge in edges:
        scene = make_scene(OUT / f"scene-{edge}.tif", edge)
        cluster, client = _cluster(2)
        try:
            seconds, _ = _job(scene, bundle, cluster.scheduler_address, OUT / f"dask-mem-{edge}")
            rss = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        finally:
            client.close()
            cluster.close()
        peaks[edge] = max(rss.values())
        print(
            json.dumps(
                {
                    "edge": edge,
                    "seconds": round(seconds, 1),
                    "worker_peak_rss_mb": sorted(round(v) for v in rss.values()),
                }
            ),
            flush=True,
        )
    print(json.dumps({"ratio_large_over_small": round(peaks[edges[-1]] / peaks[edges[0]], 3)}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scaling")
    s.add_argument("--edge", type=int, default=8192)
    s.add_argument("--pairs", type=int, default=2)
    for name in ("ceiling", "forward-rate"):
        c = sub.add_parser(name)
        c.add_argument("--seconds", type=float, default=30.0)
    m = sub.add_parser("memory")
    m.add_argument("--edges", type=int, nargs="+", default=[4096, 16384])
    args = parser.parse_args()
    if args.cmd == "scaling":
        scaling(args.edge, args.pairs)
    elif args.cmd == "ceiling":
        ceiling(args.seconds)
    elif args.cmd == "forward-rate":
        forward_rate(args.seconds)
    else:
        memory(args.edges)
