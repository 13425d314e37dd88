"""Scene leases on a real file system, contended by real processes (pipeline/execution/lease.py)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.execution.lease import Busy, FileLeaseStore, Lease, LeaseInfo, acquire, live_leases

SPAWN = mp.get_context("spawn")  # each contender is a fresh process with its own run id


def _contend(path: str, timeout: float, start: float, hold: float, out: mp.Queue) -> None:
    while time.time() < start:  # all contenders try within the same few milliseconds
        time.sleep(0.001)
    got = acquire(FileLeaseStore(path), timeout=timeout)
    if isinstance(got, Lease):
        out.put(("won", os.getpid(), got.taken_over.pid if got.taken_over else None))
        time.sleep(hold)
        got.release()
    else:
        out.put(("busy", os.getpid(), got.holder.pid))


def _race(path: Path, n: int, timeout: float = 30.0) -> list[tuple]:
    out: mp.Queue = SPAWN.Queue()
    start = time.time() + 3.0
    procs = [SPAWN.Process(target=_contend, args=(str(path), timeout, start, 2.0, out)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    return results


def test_exactly_one_of_many_processes_takes_a_free_lease(tmp_path):
    results = _race(tmp_path / "scene.lease", 6)
    winners = [r for r in results if r[0] == "won"]
    assert len(winners) == 1, results
    # everyone else saw the winner, by its pid, as the live holder
    assert all(r[2] == winners[0][1] for r in results if r[0] == "busy"), results
    assert not (tmp_path / "scene.lease").exists()  # released
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporaries left behind


def test_exactly_one_process_takes_over_a_stale_lease(tmp_path):
    path = tmp_path / "scene.lease"
    # a run on another machine that stopped renewing its lease a minute ago
    dead = LeaseInfo("feedc0ffee00", "elsewhere", 4242, time.time() - 600, time.time() - 60, "other-node")
    path.write_bytes(dead.encode())
    os.utime(path, (dead.heartbeat, dead.heartbeat))
    results = _race(path, 5, timeout=10.0)
    winners = [r for r in results if r[0] == "won"]
    assert len(winners) == 1, results
    assert all(r[2] == winners[0][1] for r in results if r[0] == "busy"), results


def test_the_winner_of_a_stale_lease_says_whose_it_took_over(tmp_path):
    path = tmp_path / "scene.lease"
    dead = LeaseInfo("feedc0ffee00", "elsewhere", 4242, time.time() - 600, time.time() - 60, "other-node")
    path.write_bytes(dead.encode())
    os.utime(path, (dead.heartbeat, dead.heartbeat))
    for _ in range(3):  # the race differs every time: run it a few times
        path.write_bytes(dead.encode())
        os.utime(path, (dead.heartbeat, dead.heartbeat))
        winners = [r for r in _race(path, 5, timeout=10.0) if r[0] == "won"]
        assert [w[2] for w in winners] == [4242]
        assert [p.name for p in tmp_path.iterdir()] == []  # the record moved aside was claimed


def test_busy_lease_names_its_holder_and_heartbeats_keep_it_alive(tmp_path):
    path = tmp_path / "scene.lease"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD + "time.sleep(600)\n", str(path), "0.8"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(2.5)  # three timeouts: only the heartbeat keeps it alive
        got = acquire(FileLeaseStore(path), timeout=0.8)
        assert isinstance(got, Busy)
        assert got.holder.pid == holder.pid and str(holder.pid) in got.reason
        assert got.reason.startswith("being processed by run ") and " on host " in got.reason
        assert " since " in got.reason
        assert [i.pid for i in live_leases(tmp_path, 0.8)] == [holder.pid]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died on this machine: its lease is taken over at once, without waiting for the timeout
    t0 = time.perf_counter()
    got = acquire(FileLeaseStore(path), timeout=60)
    assert isinstance(got, Lease) and got.taken_over is not None and got.taken_over.pid == holder.pid
    assert time.perf_counter() - t0 < 5
    assert "took over the stale lease of run" in got.note
    record = json.loads(path.read_text())
    assert record["pid"] == os.getpid()
    got.release()
    assert not path.exists() and live_leases(tmp_path) == []


def test_wait_blocks_until_the_holder_releases(tmp_path):
    path = tmp_path / "scene.lease"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD + "time.sleep(1.5)\nlease.release()\n", str(path), "30"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        seen: list[Busy] = []
        t0 = time.perf_counter()
        got = acquire(FileLeaseStore(path), timeout=30, wait=True, poll=0.1, on_wait=seen.append)
        assert isinstance(got, Lease) and got.taken_over is None  # released, not taken over
        assert time.perf_counter() - t0 > 0.5 and seen and seen[0].holder.pid == holder.pid
        got.release()
    finally:
        holder.wait(timeout=30)


HOLD = """
import sys, time
from pipeline.execution.lease import FileLeaseStore, acquire
lease = acquire(FileLeaseStore(sys.argv[1]), timeout=float(sys.argv[2]))
print("held", flush=True)
"""


def test_a_run_whose_create_lands_in_a_take_overs_gap_gets_the_note(tmp_path):
    """The interleaving behind the race above, made deterministic: run A moves the stale record aside,
    run B's plain create lands before A's, and B (the holder) reports whose lease it took over."""
    path = tmp_path / "scene.lease"
    dead = LeaseInfo("feedc0ffee00", "elsewhere", 4242, time.time() - 600, time.time() - 60, "other-node")
    path.write_bytes(dead.encode())
    os.utime(path, (dead.heartbeat, dead.heartbeat))
    got_b: list[Lease | Busy] = []

    class SlowA(FileLeaseStore):  # run A, descheduled between moving the record aside and linking
        def create(self, info: LeaseInfo) -> object | None:
            if path.exists() or got_b:
                return super().create(info)
            got_b.append(acquire(FileLeaseStore(path), timeout=10.0))
            return super().create(info)

    got_a = acquire(SlowA(path), timeout=10.0)
    (b,) = got_b
    assert isinstance(b, Lease) and b.taken_over is not None and b.taken_over.pid == 4242
    assert isinstance(got_a, Busy) and got_a.holder.pid == os.getpid()
    b.release()
    assert [p.name for p in tmp_path.iterdir()] == []
