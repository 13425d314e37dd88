"""The STAC Collection the bucket flow keeps at its output prefix, so the outputs form a catalogue.

``collection.json`` at the output prefix links every scene's ``NAME_item.json`` (absolute URLs, so
the collection can be read from anywhere) and spans their bounding boxes and dates. Adding a scene
is idempotent: its link is replaced, never doubled, and the extent is recomputed from the links'
own bboxes and datetimes as the flow records them. Built and written with pystac; the flow writes
it from one thread after each scene, next to the manifest, by compare-and-swap like the manifest.
"""

from __future__ import annotations

import json
import logging
import random
import time
from datetime import datetime
from typing import Any

from flows.leases import conditional_put, head_etag
from flows.manifest import CAS_ATTEMPTS
from flows.storage import S3Prefix, safe_key
from pipeline.errors import OutputError

COLLECTION = "collection.json"
log = logging.getLogger(__name__)


def collection_id(where: S3Prefix) -> str:
    """A stable id from the prefix (``s3://b/out/run1`` -> ``b-out-run1``)."""
    return "-".join(part for part in where.path.split("/") if part)


def _new(where: S3Prefix) -> Any:
    import pystac

    extent = pystac.Extent(
        pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]), pystac.TemporalExtent([[None, None]])
    )
    return pystac.Collection(
        collection_id(where),
        f"tilewise segmentation outputs under {where.uri}",
        extent,
        title=f"tilewise: {where.uri}",
        license="other",
    )


def add_item(collection: Any, item: Any, href: str) -> None:
    """Link ``item`` (found at ``href``) from ``collection``, replacing an older link to the same href,
    and grow the extent to cover every linked item (each link keeps its item's bbox and datetime)."""
    import pystac

    collection.links = [link for link in collection.links if not (link.rel == "item" and link.href == href)]
    link = pystac.Link("item", href, pystac.MediaType.GEOJSON, item.id)
    link.extra_fields["tilewise:bbox"] = item.bbox
    link.extra_fields["tilewise:datetime"] = item.datetime.isoformat() if item.datetime else None
    collection.add_link(link)
    boxes = [lk.extra_fields.get("tilewise:bbox") for lk in collection.links if lk.rel == "item"]
    boxes = [b for b in boxes if b]
    if boxes:
        union = [
            min(b[0] for b in boxes),
            min(b[1] for b in boxes),
            max(b[2] for b in boxes),
            max(b[3] for b in boxes),
        ]
        collection.extent.spatial = pystac.SpatialExtent([union])
    times = [lk.extra_fields.get("tilewise:datetime") for lk in collection.links if lk.rel == "item"]
    stamps = sorted(datetime.fromisoformat(t) for t in times if t)
    if stamps:
        collection.extent.temporal = pystac.TemporalExtent([[stamps[0], stamps[-1]]])


class CollectionStore:
    """Load, update and write ``collection.json`` under an output prefix."""

    def __init__(self, fs: Any, where: S3Prefix) -> None:
        self.fs, self.where = fs, where
        self.path = f"{where.bucket}/{safe_key(where, COLLECTION)}"

    @property
    def uri(self) -> str:
        return f"s3://{self.path}"

    def load(self) -> Any:
        return self._load()[0]

    def _load(self) -> tuple[Any, str | None]:
        """The collection and the ETag it was read at (None: there is none yet)."""
        import pystac

        etag = head_etag(self.fs, self.path)  # first: the content read next is as new or newer
        if etag is None:
            return _new(self.where), None
        try:
            raw = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return _new(self.where), None
        try:
            return pystac.Collection.from_dict(json.loads(raw), migrate=False), etag
        except (ValueError, KeyError, TypeError, pystac.STACError):
            log.warning("collection %s is unreadable; starting it afresh", self.uri)
            return _new(self.where), etag

    def record(self, item_uri: str) -> None:
        """Add the item at ``item_uri`` (already uploaded) to the collection and write it back by
        compare-and-swap, as the manifest is: two runs on one prefix never drop each other's links."""
        import pystac

        item = pystac.Item.from_dict(json.loads(self.fs.cat_file(item_uri.removeprefix("s3://"))))
        for attempt in range(CAS_ATTEMPTS):
            collection, etag = self._load()
            add_item(collection, item, item_uri)
            data = collection.to_dict(include_self_link=False, transform_hrefs=False)
            if conditional_put(self.fs, self.path, json.dumps(data, indent=1).encode(), etag) is not None:
                return
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))  # another run wrote: add to theirs
        tries = f"{CAS_ATTEMPTS} tries"
        raise OutputError(f"the collection kept changing under this run ({tries})", path=self.uri)
