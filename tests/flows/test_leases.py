"""Leases and the manifest's compare-and-swap on a real S3 API (moto server), contended by real
processes (flows/leases.py, flows/manifest.py)."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

from flows.leases import S3LeaseStore, conditional_put
from flows.manifest import ManifestEntry, ManifestStore
from flows.storage import S3Prefix, s3_filesystem
from pipeline.execution.lease import Busy, Lease, LeaseInfo, acquire

SPAWN = mp.get_context("spawn")


def _contend(env: dict, out_uri: str, scene: str, start: float, out: mp.Queue) -> None:
    os.environ.update(env)
    store = S3LeaseStore(s3_filesystem(), S3Prefix.parse(out_uri), scene)
    while time.time() < start:
        time.sleep(0.001)
    got = acquire(store, timeout=30)
    if isinstance(got, Lease):
        out.put(("won", os.getpid(), got.taken_over.pid if got.taken_over else None))
        time.sleep(2.0)
        got.release()
    else:
        out.put(("busy", os.getpid(), got.holder.pid))


def _race(env: dict, out_uri: str, n: int) -> list[tuple]:
    out: mp.Queue = SPAWN.Queue()
    start = time.time() + 4.0
    procs = [
        SPAWN.Process(target=_contend, args=(env, out_uri, "s3://b/in/a.tif", start, out)) for _ in range(n)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=90) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    return results


def test_one_process_of_many_takes_an_s3_lease(s3_env, s3, bucket):
    results = _race(s3_env, f"s3://{bucket}/out", 3)
    winners = [r for r in results if r[0] == "won"]
    assert len(winners) == 1, results
    assert all(r[2] == winners[0][1] for r in results if r[0] == "busy"), results
    assert not s3.list_objects_v2(Bucket=bucket, Prefix="out/.tilewise/leases/").get("Contents")  # released


def test_stale_s3_lease_is_taken_over_and_a_live_one_is_not(s3_env, s3, bucket):
    fs, where = s3_filesystem(), S3Prefix.parse(f"s3://{bucket}/out")
    store = S3LeaseStore(fs, where, "s3://b/in/a.tif")
    assert store.path.startswith(f"{bucket}/out/.tilewise/leases/")
    dead = LeaseInfo("feedc0ffee00", "elsewhere", 4242, time.time() - 600, time.time() - 60, "other-node")
    assert conditional_put(fs, store.path, dead.encode(), None) is not None
    assert conditional_put(fs, store.path, dead.encode(), None) is None  # If-None-Match: * refused
    got = acquire(store, timeout=2.0)  # renewed every 0.5 s
    assert isinstance(got, Lease) and got.taken_over == dead
    # the heartbeat renews the object (If-Match our ETag); a second acquirer sees it alive
    before = got.token
    time.sleep(1.5)
    got2 = acquire(S3LeaseStore(fs, where, "s3://b/in/a.tif"), timeout=2.0)
    assert isinstance(got2, Busy) and got2.holder.pid == os.getpid() and got.token != before
    got.release()
    assert store.read() is None


def _record(env: dict, out_uri: str, names: list[str], start: float) -> None:
    os.environ.update(env)
    store = ManifestStore(s3_filesystem(), S3Prefix.parse(out_uri))
    manifest = store.load()
    while time.time() < start:
        time.sleep(0.001)
    for name in names:
        entry = ManifestEntry(input=f"s3://b/in/{name}.tif", fingerprint="f", bundle_hash="b",
                              config_hash="c", status="ok", flow_run=str(os.getpid()))  # fmt: skip
        store.record(manifest, entry)


def test_runs_recording_together_lose_no_manifest_entry(s3_env, s3, bucket):
    out_uri = f"s3://{bucket}/out"
    start = time.time() + 4.0
    names = [[f"p{p}-{i}" for i in range(8)] for p in range(3)]
    procs = [SPAWN.Process(target=_record, args=(s3_env, out_uri, n, start)) for n in names]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    manifest = ManifestStore(s3_filesystem(), S3Prefix.parse(out_uri)).load()
    assert sorted(manifest.entries) == sorted(f"s3://b/in/{n}.tif" for group in names for n in group)
    assert manifest.generation == 24  # every write built on the one before it
