"""Pure parts of the flows: key safety, scene grouping, manifest decisions and generations, scrubbing,
artifact keys, which errors are retried. No Prefect server needed."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

import pytest

from flows.artifacts import artifact_key
from flows.bucket import find_scenes
from flows.manifest import Manifest, ManifestEntry, ManifestStore, config_hash, fingerprint
from flows.scene_runs import is_transient
from flows.storage import (
    ObjectInfo,
    S3Prefix,
    UnsafeKey,
    gdal_s3_env,
    local_under,
    s3_filesystem,
    safe_key,
    safe_relative,
)
from pipeline.errors import ConfigError, FormatError, InputError, OutputError, redact
from pipeline.job.config import load_config


def test_prefix_parsing_and_safe_keys():
    out = S3Prefix.parse("s3://my-bucket/results/run1/")
    assert (out.bucket, out.prefix, out.uri) == ("my-bucket", "results/run1", "s3://my-bucket/results/run1")
    assert safe_key(out, "sub", "a_labels.tif") == "results/run1/sub/a_labels.tif"
    for bad in ("s3://Bad_Bucket/x", "s3://bkt/a/../b", "/local/path", "gs://bkt/x", "s3://bkt/a//b"):
        with pytest.raises(ConfigError):
            S3Prefix.parse(bad)
    for parts in (("..",), ("a", ".."), ("a/../../x",), ("",), ("a\\..\\b",), ("x\n",), ("/etc",)):
        with pytest.raises(UnsafeKey):
            safe_key(out, *parts)
    for rel in ("../../etc/x.tif", "/abs.tif", "a//b.tif", "./a.tif", "a/./b.tif"):
        with pytest.raises(UnsafeKey):
            safe_relative(rel)
    assert safe_relative("a/b/c.tif") == PurePosixPath("a/b/c.tif")


def test_local_staging_cannot_follow_a_symlink_out(tmp_path):
    root = tmp_path / "stage"
    root.mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert local_under(root, PurePosixPath("a/b")) == root / "a" / "b"
    with pytest.raises(UnsafeKey):
        local_under(root, PurePosixPath("link/x"))


def _obj(key: str, etag: str = "e1", size: int = 10) -> ObjectInfo:
    return ObjectInfo(key, etag, size)


def test_find_scenes_groups_and_excludes():
    src, dst = S3Prefix.parse("s3://bkt/in"), S3Prefix.parse("s3://bkt/in/results")
    objects = [
        _obj("in/a.tif"),
        _obj("in/ct/CASE_0000.nii.gz"),
        _obj("in/ct/CASE_0001.nii.gz"),
        _obj("in/vol.zarr/zarr.json"),
        _obj("in/vol.zarr/c/0/0"),
        _obj("in/notes.txt"),
        _obj("in/s2/item.json"),  # a STAC Item: its assets are read through it
        _obj("in/.hidden/b.tif"),
        _obj("in/results/a_labels.tif"),
        _obj("in/results/.tilewise/manifest.json"),
        _obj("in/../../etc/evil.tif"),
    ]
    scenes = {s.uri.removeprefix("s3://bkt/"): s for s in find_scenes(objects, src, dst)}
    assert sorted(scenes) == [
        "in/../../etc/evil.tif", "in/a.tif", "in/ct/CASE_0000.nii.gz", "in/s2/item.json", "in/vol.zarr"
    ]  # fmt: skip
    assert (scenes["in/s2/item.json"].kind, scenes["in/s2/item.json"].rel_dir) == ("stac", "s2")
    assert (
        scenes["in/ct/CASE_0000.nii.gz"].kind == "nifti" and len(scenes["in/ct/CASE_0000.nii.gz"].uris) == 2
    )
    assert (
        scenes["in/ct/CASE_0000.nii.gz"].rel_dir == "ct" and scenes["in/ct/CASE_0000.nii.gz"].stem == "CASE"
    )
    assert scenes["in/vol.zarr"].kind == "zarr" and len(scenes["in/vol.zarr"].objects) == 2
    assert scenes["in/../../etc/evil.tif"].problem and not scenes["in/a.tif"].problem
    assert fingerprint([_obj("in/a.tif")], "in/a.tif") != fingerprint([_obj("in/a.tif", "e2")], "in/a.tif")


def _entry(status: str, retryable: bool = False) -> ManifestEntry:
    return ManifestEntry(input="s3://bkt/in/a.tif", fingerprint="fp", bundle_hash="b", config_hash="c",
                         status=status, retryable=retryable)  # fmt: skip


def test_manifest_decides_what_to_process():
    m = Manifest()
    assert m.needs("s3://bkt/in/a.tif", "fp", "b", "c")
    m.entries["s3://bkt/in/a.tif"] = _entry("ok")
    assert not m.needs("s3://bkt/in/a.tif", "fp", "b", "c")
    assert m.needs("s3://bkt/in/a.tif", "fp2", "b", "c")  # object changed
    assert m.needs("s3://bkt/in/a.tif", "fp", "b2", "c")  # other bundle
    assert m.needs("s3://bkt/in/a.tif", "fp", "b", "c2")  # other settings
    m.entries["s3://bkt/in/a.tif"] = _entry("failed")
    assert not m.needs("s3://bkt/in/a.tif", "fp", "b", "c")  # corrupt stays corrupt until replaced
    m.entries["s3://bkt/in/a.tif"] = _entry("failed", retryable=True)
    assert m.needs("s3://bkt/in/a.tif", "fp", "b", "c")  # a network error is retried
    base = load_config(None, {})
    assert config_hash(base) == config_hash(load_config(None, {"execution.workers": 3}))
    assert config_hash(base) != config_hash(load_config(None, {"tiling.overlap": 0.5}))
    assert config_hash(base) != config_hash(load_config(None, {"outputs.polygons": True}))


def test_manifest_generations_survive_a_corrupt_object(s3, bucket):
    fs = s3_filesystem()
    store = ManifestStore(fs, S3Prefix.parse(f"s3://{bucket}/out"))
    m = store.load()
    store.record(m, _entry("ok"))
    store.record(m, _entry("ok").model_copy(update={"input": "s3://bkt/in/b.tif"}))
    assert m.generation == 2
    s3.put_object(Bucket=bucket, Key="out/.tilewise/manifest.json", Body=b'{"format": 1, "gener')
    again = ManifestStore(fs, S3Prefix.parse(f"s3://{bucket}/out"))
    recovered = again.load()
    assert recovered.generation == 1 and list(recovered.entries) == ["s3://bkt/in/a.tif"]
    again.record(recovered, _entry("ok").model_copy(update={"input": "s3://bkt/in/c.tif"}))
    backup = Manifest.model_validate_json(
        s3.get_object(Bucket=bucket, Key="out/.tilewise/manifest.prev.json")["Body"].read()
    )
    assert backup.generation == 1  # the corrupt object never became the backup
    # a concurrent writer's entries are merged, not lost
    other = ManifestStore(fs, S3Prefix.parse(f"s3://{bucket}/out"))
    theirs = other.load()
    again.record(recovered, _entry("ok").model_copy(update={"input": "s3://bkt/in/d.tif"}))
    other.record(theirs, _entry("ok").model_copy(update={"input": "s3://bkt/in/e.tif"}))
    final = ManifestStore(fs, S3Prefix.parse(f"s3://{bucket}/out")).load()
    assert {"s3://bkt/in/d.tif", "s3://bkt/in/e.tif", "s3://bkt/in/c.tif"} <= set(final.entries)


def test_scrub_and_artifact_keys(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "verysecretvalue")
    text = redact("GET http://user:pa55@minio:9000/b/k?X-Amz-Signature=abc123&x=1 failed: verysecretvalue")
    assert "pa55" not in text and "abc123" not in text and "verysecretvalue" not in text and "x=1" in text
    for target in ("s3://My_Bucket/Out Put/", "/tmp/a b/ÄÖ", ""):
        assert re.fullmatch(r"[a-z0-9-]+", artifact_key("bucket", target))
    assert artifact_key("folder", "/data/out") == artifact_key("folder", "/data/out")


def test_only_transient_errors_are_retried():
    assert (
        is_transient(ConnectionResetError())
        and is_transient(TimeoutError())
        and is_transient(OSError(5, "EIO"))
    )
    assert is_transient(FormatError("cannot open: CURL error: Could not resolve host: b.s3.amazonaws.com"))
    assert is_transient(FormatError("read failed: HTTP response code: 503"))
    assert not is_transient(FormatError("HTTP response code: 403"))
    for exc in (FormatError("bad"), InputError("bands"), OutputError("exists"), FileNotFoundError(),
                PermissionError(), ValueError("x"), RuntimeError("bug")):  # fmt: skip
        assert not is_transient(exc), exc


def test_gdal_env_from_the_standard_endpoint_variable(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://key:secret@127.0.0.1:9000")
    monkeypatch.delenv("AWS_S3_ENDPOINT", raising=False)
    monkeypatch.setenv("AWS_HTTPS", "YES")  # the user's own setting wins
    with gdal_s3_env() as added:
        assert os.environ["AWS_S3_ENDPOINT"] == "127.0.0.1:9000" and "secret" not in str(added)
        assert os.environ["AWS_HTTPS"] == "YES" and os.environ["AWS_VIRTUAL_HOSTING"] == "FALSE"
    assert "AWS_S3_ENDPOINT" not in os.environ


def test_example_configs_are_valid():
    import yaml
    from prefect.flows import load_flow_from_entrypoint

    from flows.bucket import check_bucket_config

    root = Path(__file__).resolve().parents[2]
    job = load_config(root / "configs/bucket-job.yaml")
    check_bucket_config(job)
    spec = yaml.safe_load((root / "prefect.yaml").read_text())
    from prefect.cli.deploy._models import PrefectYamlModel  # what `prefect deploy` validates against

    PrefectYamlModel.model_validate(spec)
    (deployment,) = spec["deployments"]
    flow = load_flow_from_entrypoint(str(root / deployment["entrypoint"]))
    assert flow.name == "tilewise-bucket"
    params = flow.validate_parameters(deployment["parameters"])
    check_bucket_config(params["config"])
