"""The bucket flow against a real S3 API: outputs and reports land under the prefix, a corrupt object
fails with its reason and fails the run, reruns process only what is new, keys cannot escape."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.flows.conftest import KEY_ID, SECRET, keys
from tests.pipeline.formats.stac_schemas import validate


def _config(bucket: str, bundle: Path, **extra):
    from pipeline.job.config import load_config

    over = {"input": f"s3://{bucket}/in", "output": f"s3://{bucket}/out", "model": str(bundle),
            "tiling.block_size": [128], **extra}  # fmt: skip
    return load_config(None, over)


def _collection(s3, bucket: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key="out/collection.json")["Body"].read())


def _item_links(collection: dict) -> set[str]:
    return {link["href"] for link in collection["links"] if link["rel"] == "item"}


def _run(config, tmp_path: Path):
    from flows.bucket import bucket_flow
    from flows.scene_runs import outcome

    state = bucket_flow(config, staging_dir=str(tmp_path / "stage"), return_state=True)
    return state, outcome(state)


def _artifacts(prefix: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=prefix)))


def test_bucket_flow_processes_new_objects_once(tmp_path, data, s3, bucket, crop_tif, small_bundle, caplog):
    caplog.set_level(logging.INFO)
    tenth = data / "geo/rasterio/rgb-byte-tenth.tif"
    s3.upload_file(str(tenth), bucket, "in/tenth.tif")
    s3.upload_file(str(crop_tif), bucket, "in/sub/crop.tif")
    s3.put_object(
        Bucket=bucket, Key="in/broken.tif", Body=(data / "geo/rasterio/RGB.byte.tif").read_bytes()[:5000]
    )
    config = _config(bucket, small_bundle)

    state, summary = _run(config, tmp_path)
    assert state.is_failed() and "1 of 3 scenes failed" in state.message
    assert (summary.count("ok"), summary.count("failed"), summary.listed) == (2, 1, 3)
    (bad,) = summary.failed
    assert bad.uri.endswith("in/broken.tif") and "broken.tif" in bad.reason and "truncated" in bad.reason
    after = keys(s3, bucket)
    for stem, folder in (("tenth", ""), ("crop", "sub/")):
        assert f"out/{folder}{stem}_labels.tif" in after and f"out/{folder}{stem}_quicklook.png" in after
        report = json.loads(
            s3.get_object(Bucket=bucket, Key=f"out/{folder}{stem}_report.json")["Body"].read()
        )
        assert report["outputs"]["labels"] == f"s3://{bucket}/out/{folder}{stem}_labels.tif"
        assert report["input"] == f"s3://{bucket}/in/{folder}{stem}.tif"
        assert all("area_ha" in c for c in report["classes"])
    assert not [k for k in after if "broken" in k and k.startswith("out/")]
    assert all(k.startswith(("in/", "out/")) for k in after)
    import rasterio

    from flows.storage import gdal_s3_env

    out_labels = f"/vsis3/{bucket}/out/sub/crop_labels.tif"
    with gdal_s3_env(), rasterio.open(out_labels) as labels, rasterio.open(crop_tif) as src:
        assert labels.shape == src.shape and labels.transform == src.transform and labels.crs == src.crs
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="out/.tilewise/manifest.json")["Body"].read())
    entries = manifest["entries"]
    assert {e["status"] for e in entries.values()} == {"ok", "failed"} and len(entries) == 3
    broken = entries[f"s3://{bucket}/in/broken.tif"]
    assert broken["retryable"] is False and "truncated" in broken["reason"] and broken["objects"][0]["etag"]

    collection = _collection(s3, bucket)
    assert _item_links(collection) == {f"s3://{bucket}/out/{p}_item.json" for p in ("tenth", "sub/crop")}

    state2, again = _run(config, tmp_path)
    assert state2.is_completed() and again.processed == 0 and again.unchanged == 3
    assert _collection(s3, bucket) == collection

    s3.upload_file(str(tenth), bucket, "in/new/fourth.tif")
    from flows.bucket import run_bucket_job

    third = run_bucket_job(config, staging_dir=str(tmp_path / "stage"))
    assert [r.uri for r in third.results] == [f"s3://{bucket}/in/new/fourth.tif"]
    assert third.results[0].status == "ok" and "out/new/fourth_report.json" in keys(s3, bucket)
    grown = _collection(s3, bucket)
    assert _item_links(grown) == _item_links(collection) | {f"s3://{bucket}/out/new/fourth_item.json"}
    validate(grown)
    item = json.loads(s3.get_object(Bucket=bucket, Key="out/new/fourth_item.json")["Body"].read())
    validate(item)
    assert item["assets"]["labels"]["href"] == "./fourth_labels.tif"
    assert {"out/new/fourth_labels.qml", "out/sub/crop_labels.qml"} <= set(keys(s3, bucket))

    # credentials appear nowhere: artifacts, manifest, reports, logs
    arts = _artifacts("tilewise-bucket-")
    assert {a.type for a in arts} >= {"markdown", "table"}
    assert all(a.key and a.key.islower() and " " not in a.key for a in arts)
    summary_md = next(
        a for a in arts if a.type == "markdown" and a.flow_run_id == state.state_details.flow_run_id
    )
    assert "broken" in summary_md.data and "1 failed" in summary_md.data and "ha" in summary_md.data
    texts = [json.dumps(a.data) for a in arts]
    texts += [s3.get_object(Bucket=bucket, Key=k)["Body"].read().decode() for k in keys(s3, bucket)
              if k.endswith(".json")]  # fmt: skip
    texts.append(caplog.text)
    assert not [t for t in texts if SECRET in t or KEY_ID in t]


def test_keys_cannot_escape_the_output_prefix(tmp_path, data, s3, bucket, small_bundle):
    tenth = (data / "geo/rasterio/rgb-byte-tenth.tif").read_bytes()
    for key in ("in/../../etc/evil.tif", "in//abs.tif", "in/ok.tif"):
        s3.put_object(Bucket=bucket, Key=key, Body=tenth)
    before = set(keys(s3, bucket))
    stage = tmp_path / "stage"
    state, summary = _run(_config(bucket, small_bundle), tmp_path)
    status = {r.uri.split(f"{bucket}/", 1)[1]: r for r in summary.results}
    assert status["in/ok.tif"].status == "ok"
    for bad in ("in/../../etc/evil.tif", "in//abs.tif"):
        assert status[bad].status == "failed" and "unsafe key" in status[bad].reason
    assert state.is_failed()
    written = set(keys(s3, bucket)) - before
    assert written and all(k.startswith("out/") and ".." not in k and "//" not in k for k in written)
    assert not (tmp_path / "etc").exists() and not (stage.parent / "etc").exists()
    # refused keys are remembered (not retried) until they change
    _, again = _run(_config(bucket, small_bundle), tmp_path)
    assert again.processed == 0


def test_config_errors_fail_the_run_without_touching_the_bucket(tmp_path, s3, bucket, small_bundle):
    from flows.bucket import run_bucket_job
    from pipeline.errors import ConfigError, InputError

    with pytest.raises(ConfigError, match="must not contain the input"):
        run_bucket_job(_config(bucket, small_bundle, output=f"s3://{bucket}"))
    with pytest.raises(InputError, match="cannot read"):
        run_bucket_job(_config("tw-no-such-bucket", small_bundle))
    assert keys(s3, bucket) == []
