"""Flow tests: a real S3 API (moto server on 127.0.0.1), Prefect isolated in a temporary home."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports Prefect: its settings are read at import time.
_HOME = tempfile.mkdtemp(prefix="tw-prefect-home-")
atexit.register(shutil.rmtree, _HOME, True)
os.environ.setdefault("PREFECT_HOME", _HOME)
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.pop("PREFECT_API_URL", None)

BIN = Path(sys.executable).parent
SECRET = "tw-SENTINEL-secret-" + uuid.uuid4().hex[:12]
KEY_ID = "TWSENTINELKEYID" + uuid.uuid4().hex[:8].upper()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def stop(proc: subprocess.Popen, *, group: bool = False) -> None:
    """End a process this test suite started (its own process group when ``group``)."""
    import signal

    if proc.poll() is None:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for_port(port, proc, 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def s3_env(moto_endpoint: str) -> Iterator[dict[str, str]]:
    """Dummy credentials (distinctive, to prove they never leak) and the endpoint, as a user sets them."""
    env = {
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in [*env, "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION"]}
    for k in ("AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION"):
        os.environ.pop(k, None)
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def bucket(s3_env: dict[str, str]) -> str:
    import boto3

    name = f"tw-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1").create_bucket(
        Bucket=name
    )
    return name


@pytest.fixture
def s3(s3_env: dict[str, str]):
    import boto3

    return boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1")


def keys(s3, bucket: str) -> list[str]:
    out: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


@pytest.fixture(scope="session")
def crop_tif(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """A 3-band 160x200 crop of the Landsat RGB scene (CC0), georeferenced."""
    import rasterio
    from rasterio.windows import Window

    out = tmp_path_factory.mktemp("crop") / "crop.tif"
    with warnings.catch_warnings(), rasterio.open(data / "geo/rasterio/RGB.byte.tif") as src:
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # affine's `*`, inside rasterio
        win = Window(300, 250, 200, 160)
        profile = {**src.profile, "width": 200, "height": 160, "transform": src.window_transform(win)}
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(src.read(window=win))
    return out


@pytest.fixture(scope="session")
def small_bundle(bundle_factory) -> Path:
    return bundle_factory(2, 3, ["water", "land"], 64, [4, 8])


@pytest.fixture(autouse=True, scope="session")
def _stop_temporary_prefect_server() -> Iterator[None]:
    """Stop Prefect's temporary server while pytest's streams are still open (no noise at exit)."""
    yield
    if "prefect.server.api.server" in sys.modules:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker
        from prefect.server.api.server import SubprocessASGIServer

        APILogWorker.drain_all(timeout=5)
        EventsWorker.drain_all(timeout=5)

        for server in list(SubprocessASGIServer._instances.values()):
            server.stop()
