"""Security properties (see docs/security.md): no unpickling by default, outputs confined to the output
root, credentials never written or printed, servers on loopback, YAML through the safe loader."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

import psutil
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from flows.cli.app import app
from pipeline.errors import BundleError, ConfigError, OutputError
from pipeline.formats.source import SceneSource
from pipeline.job.config import load_config
from pipeline.job.discover import scene_stem
from pipeline.job.scene_job import output_paths
from pipeline.job.skeleton import run_job

from .catalogue import TENTH

SECRET = "tw-secret-" + uuid.uuid4().hex
KEY_ID = "TWKEY" + uuid.uuid4().hex[:12].upper()


def test_no_unpickling_anywhere_in_a_job(tmp_path, data, bundle2, monkeypatch):
    """A whole job never calls an unpickler on a file (safetensors only); a pickle checkpoint is
    refused before ``torch.load`` is reached."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickling was attempted")

    monkeypatch.setattr(torch, "load", forbidden)
    (result,) = run_job(
        load_config(None, {"input": str(data / TENTH), "output": str(tmp_path / "o"), "model": str(bundle2)})
    )
    assert result.status == "ok", result.reason
    pickled = tmp_path / "pickled"
    shutil.copytree(bundle2, pickled)
    (pickled / "weights.safetensors").rename(pickled / "weights.pt")
    from models.bundle import load_bundle

    with pytest.raises(BundleError, match="refused"):
        load_bundle(pickled)


pieces = st.sampled_from([*"ab./\\~:_-é \x00$", "..", "../", "/etc/", "%2e", "..\\"])
names = st.lists(pieces, max_size=12).map("".join)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(prefix=st.sampled_from(["", "/", "s3://bucket/", "file://", "/data/in/"]), name=names)
def test_output_paths_are_confined_to_the_output_root(prefix: str, name: str) -> None:
    """Whatever a scene (or object key) is called, its outputs land directly in OUTPUT, or the scene
    is refused with an OutputError; ``..`` and absolute parts never escape."""
    out = Path("/srv/output")
    source = SceneSource("geotiff", (prefix + name + ".tif",))
    config = load_config(None, {"outputs.probabilities": True, "outputs.polygons": True})
    try:
        paths = output_paths(out, scene_stem(source), "geotiff", config, True)
    except OutputError:
        return
    for path in paths.values():
        assert path.parent == out and os.path.normpath(path) == str(path)
        assert path.name not in ("", ".", "..")


def test_a_scene_named_dot_dot_stays_inside(tmp_path, data, bundle2):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    weird = folder / "...tif"  # stem ".."
    shutil.copy(data / TENTH, weird)
    cfg = load_config(None, {"input": str(weird), "output": str(out), "model": str(bundle2)})
    (result,) = run_job(cfg, sources=[SceneSource("geotiff", (str(weird),))])
    assert result.status == "ok", result.reason
    assert all(Path(p).parent == out for p in result.outputs.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # nothing written beside OUTPUT


def _listening(proc: psutil.Process) -> list[tuple[str, int, int]]:
    found = []
    for p in [proc, *proc.children(recursive=True)]:
        try:
            conns = p.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found += [(c.laddr.ip, c.laddr.port, p.pid) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


def test_cli_run_hides_credentials_and_names_each_bad_file(tmp_path, data, bundle2, monkeypatch, caplog):
    """The real CLI over a folder with bad scenes, with AWS credentials in the environment: the secret
    appears in no output line, log record or written file; each bad scene gets one line naming it;
    every socket the run opened (Prefect's temporary server included) listens on loopback only."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SECRET + "-token")
    folder, out = tmp_path / "dossier d'entrée", tmp_path / "out"
    folder.mkdir()
    shutil.copy(data / TENTH, folder / "good scene.tif")
    (folder / "empty.tif").write_bytes(b"")
    (folder / "cut.tif").write_bytes((data / TENTH).read_bytes()[:3000])
    os.symlink("loop.tif", folder / "loop.tif")
    caplog.set_level(logging.DEBUG)
    res = CliRunner().invoke(app, ["run", str(folder), str(out), "-m", str(bundle2), "--probabilities"])
    text = " ".join(res.output.split())
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    for name, word in (("empty.tif", "empty"), ("cut.tif", "truncated"), ("loop.tif", "symbolic link loop")):
        line = next(seg for seg in text.split("failed:")[1:] if name in seg)
        assert str(folder / name) in line and word in line, line
    assert (out / "good scene_labels.tif").exists()
    everything = res.output + "\n".join(r.getMessage() for r in caplog.records)
    everything += "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())
    assert SECRET not in everything and KEY_ID not in everything
    listening = _listening(psutil.Process())
    assert all(ip in ("127.0.0.1", "::1") for ip, _, _ in listening), listening


def test_local_dask_cluster_binds_loopback_only(tmp_path):
    from pipeline.execution.distributed import dask_executor

    me = psutil.Process()
    before = {port for _, port, _ in _listening(me)}
    with dask_executor(workers=1, device="cpu") as ex:
        assert ex.client.scheduler.address.startswith("tcp://127.0.0.1:")
        workers = ex.client.scheduler_info()["workers"]
        assert workers and all(w.startswith("tcp://127.0.0.1:") for w in workers)
        opened = [s for s in _listening(me) if s[1] not in before]
        assert opened and all(ip in ("127.0.0.1", "::1") for ip, _, _ in opened), opened


def test_yaml_tags_are_never_constructed(tmp_path, data, bundle2):
    marker = tmp_path / "ran"
    job = tmp_path / "job.yaml"
    job.write_text(f'tiling: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match=r"job\.yaml") as err:
        load_config(job)
    assert "\n" not in str(err.value)
    args = ["run", str(data / TENTH), str(tmp_path / "o"), "-m", str(bundle2), "-c", str(job)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert not marker.exists()


def test_credentials_in_urls_never_reach_names_reasons_or_messages(tmp_path, bundle2, monkeypatch):
    """A presigned or user:password URL (here to a closed local port) fails with a reason that names
    it without its secrets; its output name drops the query string."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    url = (
        f"https://{KEY_ID}:pw-{SECRET}@127.0.0.1:9/scene.tif?X-Amz-Signature=sig{SECRET}&X-Amz-Credential=c1"
    )
    source = SceneSource("geotiff", (url,))
    assert scene_stem(source) == "scene"
    cfg = load_config(None, {"input": str(tmp_path), "output": str(tmp_path / "out"), "model": str(bundle2)})
    (result,) = run_job(cfg, sources=[source])
    assert result.status == "failed" and "127.0.0.1:9/scene.tif" in result.reason
    assert SECRET not in result.reason and KEY_ID not in result.reason and "c1" not in result.reason
    assert SECRET not in str(OutputError("cannot write", path=url))
