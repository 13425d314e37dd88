"""Two bucket runs on one prefix (a schedule firing while the last run still goes), as real `tilewise
run s3://… s3://…` processes against a moto S3 server: each object is processed once, and the
manifest lists every object exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.flows.conftest import keys

ROOT = Path(__file__).resolve().parents[2]
STEMS = ("a", "b", "c")


def _table(text: str) -> dict[str, dict[str, str]]:
    lines = [line.replace("┃", "│") for line in text.splitlines() if line.count("│") + line.count("┃") >= 2]
    cells = [[c.strip() for c in line.strip().strip("│").split("│")] for line in lines]
    return {row["scene"]: row for row in (dict(zip(cells[0], r, strict=True)) for r in cells[1:])}


def test_two_bucket_runs_on_one_prefix_process_each_object_once(tmp_path, s3, bucket, crop_tif, small_bundle):
    for stem in STEMS:
        s3.upload_file(str(crop_tif), bucket, f"in/{stem}.tif")
    job = str(tmp_path / "job.yaml")
    Path(job).write_text(yaml.safe_dump({"input": f"s3://{bucket}/in", "output": f"s3://{bucket}/out",
                                   "model": str(small_bundle), "tiling": {"block_size": [64]}}))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=str(ROOT), COLUMNS="400", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    runs = {}
    for name in ("one", "two"):
        log = (tmp_path / f"{name}.log").open("w")
        runs[name] = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", f"s3://{bucket}/in", f"s3://{bucket}/out", "-c", job],
            cwd=ROOT, env={**env, "PREFECT_HOME": str(tmp_path / name)}, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    stopped = None
    try:  # the first run to lease a scene is paused until the other is done, as on a busy machine
        deadline = time.time() + 420  # CLI start-up is slow on a loaded machine
        while time.time() < deadline and stopped is None:
            leases = [k for k in keys(s3, bucket) if k.startswith("out/.tilewise/leases/")]
            if leases:
                pid = json.loads(s3.get_object(Bucket=bucket, Key=leases[0])["Body"].read())["pid"]
                os.kill(pid, signal.SIGSTOP)
                stopped = next(n for n, p in runs.items() if p.pid == pid)
            assert all(p.poll() is None for p in runs.values()), "a run ended before taking any lease"
            time.sleep(0.05)
        assert stopped is not None, "no run took a lease"
        other = next(n for n in runs if n != stopped)
        assert runs[other].wait(timeout=300) == 0, (tmp_path / f"{other}.log").read_text()[-3000:]
    finally:
        for p in runs.values():
            if p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
    assert runs[stopped].wait(timeout=300) == 0, (tmp_path / f"{stopped}.log").read_text()[-3000:]

    tables = {n: _table((tmp_path / f"{n}.log").read_text()) for n in runs}
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="out/.tilewise/manifest.json")["Body"].read())
    entries = manifest["entries"]
    assert sorted(entries) == [f"s3://{bucket}/in/{s}.tif" for s in STEMS]  # each exactly once
    assert {e["status"] for e in entries.values()} == {"ok"}
    for stem in STEMS:
        done = [n for n in runs if tables[n].get(stem, {}).get("status") == "ok"]
        assert len(done) == 1, (stem, tables)  # processed once
        assert int(tables[done[0]][stem]["windows"]) > 0
        absent_or_skipped = [
            tables[n].get(stem, {"status": "skipped"})["status"] for n in runs if n not in done
        ]
        assert absent_or_skipped == ["skipped"], (stem, tables)
    held = next(s for s in STEMS if tables[stopped].get(s, {}).get("status") == "ok")
    assert tables[other][held]["status"] == "skipped"
    assert f"(pid {runs[stopped].pid})" in tables[other][held]["outputs / reason"]
    assert all(f"out/{s}_labels.tif" in keys(s3, bucket) for s in STEMS)
    assert not [k for k in keys(s3, bucket) if k.startswith("out/.tilewise/leases/")]  # all released
