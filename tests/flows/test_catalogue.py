"""The bucket flow's STAC Collection: links added idempotently, extent spanning the items, valid STAC."""

from __future__ import annotations

from datetime import UTC, datetime

import pystac

from flows.catalogue import _new, add_item, collection_id
from flows.storage import S3Prefix
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
