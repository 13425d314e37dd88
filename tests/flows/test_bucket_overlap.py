"""Two bucket runs on one prefix (a schedule firing while the last run still goes), as real `tilewise
run s3://… s3://…` processes against a moto S3 server: each object is processed once, and the
manifest lists every object exactly once."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

from tests.flows.conftest import keys
from tests.hardening.two_runs import cli_table, race_pausing_first_holder

ROOT = Path(__file__).resolve().parents[2]
STEMS = ("a", "b", "c")


def test_two_bucket_runs_on_one_prefix_process_each_object_once(tmp_path, s3, bucket, crop_tif, small_bundle):
    for stem in STEMS:
        s3.upload_file(str(crop_tif), bucket, f"in/{stem}.tif")
    job = str(tmp_path / "job.yaml")
    Path(job).write_text(yaml.safe_dump({"input": f"s3://{bucket}/in", "output": f"s3://{bucket}/out",
                                   "model": str(small_bundle), "tiling": {"block_size": [64]}}))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=str(ROOT), COLUMNS="400", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    cmd = [sys.executable, "-m", "flows.cli", "run", f"s3://{bucket}/in", f"s3://{bucket}/out", "-c", job]

    def lease_pid() -> int | None:  # the first run to take a lease is paused; the other must skip it
        leases = [k for k in keys(s3, bucket) if k.startswith("out/.tilewise/leases/")]
        return (
            json.loads(s3.get_object(Bucket=bucket, Key=leases[0])["Body"].read())["pid"] if leases else None
        )

    runs, stopped, other = race_pausing_first_holder(
        cmd, lambda n: {**env, "PREFECT_HOME": str(tmp_path / n)}, tmp_path, lease_pid
    )
    tables = {n: cli_table((tmp_path / f"{n}.log").read_text()) for n in runs}
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
