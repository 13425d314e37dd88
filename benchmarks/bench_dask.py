"""Issue-4 figures: Dask scaling (2 workers x 1 thread vs 1 x 1), task count, scheduler overhead per task,
and per-worker peak RSS as the scene grows.

    .venv/bin/python benchmarks/bench_dask.py scaling [--edge 8192] [--pairs 2]
    .venv/bin/python benchmarks/bench_dask.py memory  [--edges 4096 16384]
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

    from pipeline.distributed import local_cluster

    os.environ.setdefault("DASK_TEMPORARY_DIRECTORY", str(OUT / "dask"))
    cluster = local_cluster(workers, threads_per_worker=1, device="cpu")
    return cluster, Client(cluster)


def _job(scene: Path, bundle: Path, address: str, out: Path) -> tuple[float, dict]:
    from pipeline.batch import run_batch
    from pipeline.config import load_config

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
    (res,) = run_batch(cfg)
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
        times: dict[int, list[float]] = {1: [], 2: []}
        report: dict = {}
        for i in range(pairs):
            for w in (1, 2) if i % 2 == 0 else (2, 1):
                cluster, client = clusters[w]
                seconds, report = _job(scene, bundle, cluster.scheduler_address, OUT / f"dask-{w}")
                times[w].append(seconds)
                print(json.dumps({"pair": i, "workers": w, "seconds": round(seconds, 2)}), flush=True)
        speedups = [a / b for a, b in zip(times[1], times[2])]
        overhead = _overhead_per_task(clusters[2][1])
        blocks = report["plan"]["blocks"]
        tasks = report["execution"]["dask_tasks"]
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
    m = sub.add_parser("memory")
    m.add_argument("--edges", type=int, nargs="+", default=[4096, 16384])
    args = parser.parse_args()
    if args.cmd == "scaling":
        scaling(args.edge, args.pairs)
    else:
        memory(args.edges)
