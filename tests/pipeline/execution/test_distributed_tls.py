"""A TLS-secured cluster: `dask scheduler` and `dask worker` processes started with certificates made
here (Dask's own ``Security.temporary()``), exactly as docs/distributed.md tells users to. The job
gives the local executor's bytes through it; clients without the cluster's certificates are refused."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import dask
import pytest
from distributed import Client
from distributed.security import Security

from pipeline.errors import ConfigError
from pipeline.job.config import load_config
from pipeline.job.skeleton import run_job

BIN = Path(sys.executable).parent
SCENE = "geo/rasterio/rgb-byte-tenth.tif"  # small: what is tested is the channel, not the scale


def _certs(folder: Path) -> dict[str, str]:
    sec = Security.temporary()  # one self-signed key and certificate for every role of this cluster
    paths = {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem"}
    paths["ca"].write_text(sec.tls_ca_file)
    paths["cert"].write_text(sec.tls_scheduler_cert)
    paths["key"].write_text(sec.tls_scheduler_key)
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    certs = _certs(tmp)
    tls = ["--tls-ca-file", certs["ca"], "--tls-cert", certs["cert"], "--tls-key", certs["key"]]
    env = {**os.environ, "DASK_TEMPORARY_DIRECTORY": str(tmp / "dask"), "OMP_NUM_THREADS": "1",
           "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"}  # fmt: skip
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    sched_file = tmp / "scheduler.json"
    loopback = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--protocol", "tls", "--port", "0",
                               "--scheduler-file", str(sched_file), *loopback, *tls], **quiet)]  # fmt: skip
    deadline = time.time() + 60
    while not sched_file.exists() and time.time() < deadline:
        time.sleep(0.2)
    worker = [str(BIN / "dask"), "worker", "--scheduler-file", str(sched_file), "--nthreads", "1"]
    procs.append(subprocess.Popen([*worker, "--protocol", "tls", *loopback, *tls], **quiet))
    config = {"distributed.comm.tls.ca-file": certs["ca"], "distributed.comm.tls.client.cert": certs["cert"],
              "distributed.comm.tls.client.key": certs["key"]}  # fmt: skip
    try:
        with dask.config.set(config), Client(scheduler_file=str(sched_file), timeout="60s") as client:
            client.wait_for_workers(1, timeout=90)
            address = client.scheduler.address
        assert address.startswith("tls://127.0.0.1:")
        yield address, config, certs
    finally:
        for p in procs[::-1]:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _job(data: Path, out: Path, bundle: Path, **over: object):
    cfg = {"input": str(data / SCENE), "output": str(out), "model": str(bundle), "tiling.block_size": [32],
           "outputs.quicklook": False, **over}  # fmt: skip
    return run_job(load_config(None, cfg))


def test_tls_cluster_output_is_byte_identical_to_local(tmp_path, data, bundle_factory, tls_cluster):
    address, config, _ = tls_cluster
    bundle = bundle_factory(2, 3, ["land", "water"], 32, [4, 8])
    (local,) = _job(data, tmp_path / "local", bundle)
    with dask.config.set(config):  # certificates from Dask's config, as a user's ~/.config/dask holds them
        (remote,) = _job(data, tmp_path / "tls", bundle, **{"execution.scheduler": address})
    assert local.status == remote.status == "ok", remote.reason
    assert remote.report["execution"]["workers"] == 1 and remote.report["execution"]["dask_tasks"] > 1
    name = Path(local.outputs["labels"]).name
    assert (tmp_path / "tls" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_clients_without_the_cluster_certificates_are_refused(tmp_path, data, bundle_factory, tls_cluster):
    address, _, certs = tls_cluster
    host, port = address.removeprefix("tls://").rsplit(":", 1)
    # tilewise without certificates: one clear line before any connection is tried
    bundle = bundle_factory(2, 3, ["land", "water"], 32, [4, 8])
    with pytest.raises(ConfigError, match="tls:// scheduler needs the cluster's CA and a client certificate"):
        _job(data, tmp_path / "o", bundle, **{"execution.scheduler": address})
    # a Dask client with certificates of its own (not signed by the cluster's CA) cannot connect
    with pytest.raises(OSError):
        Client(address, security=Security.temporary(), timeout="5s")
    # a TLS client that trusts the scheduler but shows no certificate gets no Dask conversation
    ctx = ssl.create_default_context(cafile=certs["ca"])
    ctx.check_hostname = False
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b"\x00" * 16)
                assert tls.recv(1024) == b""  # closed on us
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            pass  # refused during or right after the handshake
    # plain tcp:// to the TLS port is no way in either
    with pytest.raises(OSError):
        Client(f"tcp://{host}:{port}", timeout="5s")


def test_compose_tls_variant_configures_dask_security_for_every_role():
    """The variables docker/compose.yaml gives its TLS services are the ones Dask reads: a misspelt
    one would silently leave a role without TLS."""
    import yaml

    compose = yaml.safe_load((Path(__file__).resolve().parents[3] / "docker/compose.yaml").read_text())
    tls = [s for name, s in compose["services"].items() if name.endswith("-tls")]
    assert len(tls) == 3 and all(s["profiles"] == ["tls"] for s in tls)
    for service in tls:
        env = service["environment"]
        ours = dask.config.collect_env({k: v for k, v in env.items() if k.startswith("DASK_")})
        merged = dask.config.merge(dask.config.config, ours)  # the defaults, then what compose sets
        with dask.config.set(distributed=merged["distributed"]):
            sec = Security()
        assert sec.require_encryption is True
        assert sec.tls_ca_file == "/tls/ca.pem"
        for role in ("scheduler", "worker", "client"):
            assert getattr(sec, f"tls_{role}_cert") == f"/tls/{role}.pem"
            assert getattr(sec, f"tls_{role}_key") == f"/tls/{role}-key.pem"
    scheduler = compose["services"]["scheduler-tls"]
    assert scheduler["command"][:2] == ["--protocol", "tls"]
    assert all(p.startswith("127.0.0.1:") for p in scheduler["ports"])
    assert compose["services"]["runner-tls"]["command"][-1] == "tls://scheduler-tls:8786"
