"""The bucket flow's STAC Collection: links added idempotently, extent spanning the items, valid STAC."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from datetime import UTC, datetime

import pystac

from flows.catalogue import CollectionStore, _new, add_item, collection_id
from flows.storage import S3Prefix, s3_filesystem
from tests.pipeline.formats.stac_schemas import validate


def _item(name: str, bbox: list[float], day: int) -> pystac.Item:
    west, south, east, north = bbox
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return pystac.Item(
        name, {"type": "Polygon", "coordinates": [ring]}, bbox, datetime(2017, 2, day, tzinfo=UTC), {}
    )


def test_items_are_linked_once_and_the_extent_spans_them():
    where = S3Prefix.parse("s3://bkt/out/run1")
    assert collection_id(where) == "bkt-out-run1"
    collection = _new(where)
    a, b = _item("a", [12.0, 52.0, 12.5, 52.5], 16), _item("b", [13.0, 51.0, 13.5, 51.5], 20)
    add_item(collection, a, "s3://bkt/out/run1/a_item.json")
    add_item(collection, b, "s3://bkt/out/run1/sub/b_item.json")
    before = collection.to_dict(include_self_link=False, transform_hrefs=False)
    add_item(collection, a, "s3://bkt/out/run1/a_item.json")  # a rerun of the same scene
    after = collection.to_dict(include_self_link=False, transform_hrefs=False)
    assert sorted(link["href"] for link in after["links"] if link["rel"] == "item") == [
        "s3://bkt/out/run1/a_item.json", "s3://bkt/out/run1/sub/b_item.json"
    ]  # fmt: skip
    assert after["extent"] == before["extent"]
    assert after["extent"]["spatial"]["bbox"] == [[12.0, 51.0, 13.5, 52.5]]
    assert after["extent"]["temporal"]["interval"] == [["2017-02-16T00:00:00Z", "2017-02-20T00:00:00Z"]]
    validate(after)


def _record(env: dict, out_uri: str, item_uris: list[str], start: float) -> None:
    os.environ.update(env)
    store = CollectionStore(s3_filesystem(), S3Prefix.parse(out_uri))
    while time.time() < start:
        time.sleep(0.001)
    for uri in item_uris:
        store.record(uri)


def test_runs_recording_together_lose_no_collection_link(s3_env, s3, bucket):
    """Three runs on one output prefix add their items at once (a moto S3 server, separate
    processes): every link survives, since each write is a compare-and-swap on the ETag."""
    out_uri = f"s3://{bucket}/out"
    groups = [[f"{out_uri}/p{p}-{i}_item.json" for i in range(6)] for p in range(3)]
    for n, uri in enumerate(u for group in groups for u in group):
        item = _item(uri.rsplit("/", 1)[-1], [12.0 + n, 52.0, 12.5 + n, 52.5], 1 + n)
        body = json.dumps(item.to_dict(include_self_link=False)).encode()
        s3.put_object(Bucket=bucket, Key=uri.removeprefix(f"s3://{bucket}/"), Body=body)
    start = time.time() + 4.0
    spawn = mp.get_context("spawn")
    procs = [spawn.Process(target=_record, args=(s3_env, out_uri, g, start)) for g in groups]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    data = json.loads(s3.get_object(Bucket=bucket, Key="out/collection.json")["Body"].read())
    links = sorted(link["href"] for link in data["links"] if link["rel"] == "item")
    assert links == sorted(u for group in groups for u in group)
    assert data["extent"]["spatial"]["bbox"] == [[12.0, 52.0, 29.5, 52.5]]
    validate(data)
