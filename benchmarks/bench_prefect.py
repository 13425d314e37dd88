"""Prefect's overhead on a one-scene job: the folder flow against calling ``run_job`` directly.

.venv/bin/python benchmarks/bench_prefect.py [--pairs 5] [--cold 3]

Warm: in one process, after a warm-up flow run (the local database exists and the temporary server
is up), pairs of (flow run, direct run) in alternating order on the same scene; the difference of the
medians is what Prefect adds per job. Cold (``--cold N``): whole ``tilewise run`` processes against the
same job as a plain Python process, i.e. what a one-off CLI call pays: once with the temporary server
(started and stopped by every call), once reporting to a running ``prefect server`` (PREFECT_API_URL).
Results go to stdout and benchmarks/out/prefect.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TILEWISE_DATA", ROOT.parent / "shared" / "data"))
SCENE = (
    DATA / "geo/rasterio/rgb-byte-tenth.tif"
)  # Landsat RGB (CC0) at a tenth: the job is tiny, the overhead shows
DIRECT = (
    "import sys; from pipeline.job.skeleton import run_job; from pipeline.job.config import load_config; "
    "r = run_job(load_config(None, {'input': sys.argv[1], 'output': sys.argv[2], 'model': sys.argv[3], "
    "'outputs.overwrite': True})); sys.exit(0 if all(x.status == 'ok' for x in r) else 1)"
)


def _config(out: Path, bundle: Path):
    from pipeline.job.config import load_config

    return load_config(None, {"input": str(SCENE), "output": str(out), "model": str(bundle),
                              "outputs.overwrite": True})  # fmt: skip


def warm(pairs: int, work: Path, bundle: Path) -> dict[str, float]:
    from flows.folder import run_folder_job
    from pipeline.job.skeleton import run_job

    def flow() -> None:
        assert all(r.status == "ok" for r in run_folder_job(_config(work / "flow", bundle)).results)

    def direct() -> None:
        assert all(r.status == "ok" for r in run_job(_config(work / "direct", bundle)))

    t = time.perf_counter()
    flow()  # creates the database, starts the temporary server
    first = time.perf_counter() - t
    direct()
    times: dict[str, list[float]] = {"flow": [], "direct": []}
    for i in range(pairs):
        for name, fn in (
            (("flow", flow), ("direct", direct)) if i % 2 == 0 else (("direct", direct), ("flow", flow))
        ):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    f, d = statistics.median(times["flow"]), statistics.median(times["direct"])
    return {"first_flow_run_s": round(first, 3), "flow_median_s": round(f, 3), "direct_median_s": round(d, 3),
            "overhead_s": round(f - d, 3), "pairs": pairs}  # fmt: skip


def cold(runs: int, work: Path, bundle: Path, api: str | None = None) -> dict[str, float]:
    env = {**os.environ, "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}
    if api:
        env["PREFECT_API_URL"] = api
    cli = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        str(SCENE),
        str(work / "cli"),
        "-m",
        str(bundle),
        "--overwrite",
    ]
    plain = [sys.executable, "-c", DIRECT, str(SCENE), str(work / "plain"), str(bundle)]
    times: dict[str, list[float]] = {"cli": [], "plain": []}
    for i in range(runs):
        for name, cmd in (("cli", cli), ("plain", plain)) if i % 2 == 0 else (("plain", plain), ("cli", cli)):
            t = time.perf_counter()
            subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True)
            times[name].append(time.perf_counter() - t)
    c, p = statistics.median(times["cli"]), statistics.median(times["plain"])
    return {"cli_median_s": round(c, 3), "plain_process_median_s": round(p, 3), "overhead_s": round(c - p, 3),
            "runs": runs}  # fmt: skip


@contextmanager
def prefect_server(work: Path) -> Iterator[str]:
    """A real ``prefect server`` on 127.0.0.1 (own home, no UI), ended by its process group id."""
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(work / "server-home"), "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with (work / "server.log").open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise RuntimeError("prefect server did not start: " + (work / "server.log").read_text()[-2000:])
        yield api
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--cold", type=int, default=0, help="also time N whole CLI processes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tw-bench-prefect-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("PREFECT_HOME", str(work / "prefect-home"))
        os.environ.update(DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
                          PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING")  # fmt: skip
        from models.bundle import init_bundle

        bundle = work / "bundle"
        init_bundle(bundle, arch="unet", spatial_dims=2, in_channels=3, classes=["a", "b", "c"],
                    patch_size=128, features=[8, 16])  # fmt: skip
        results = [{"case": "warm, in process", **warm(args.pairs, work, bundle)}]
        if args.cold:
            results.append({"case": "cold process, temporary server", **cold(args.cold, work, bundle)})
            with prefect_server(work) as api:
                results.append(
                    {"case": "cold process, PREFECT_API_URL set", **cold(args.cold, work, bundle, api)}
                )
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    with (out / "prefect.txt").open("w") as fh:
        for row in results:
            line = json.dumps(row)
            print(line)
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
