"""A STAC Item as INPUT, end to end: single-band COGs at 10 and 20 m in, labels and a STAC Item out."""

from __future__ import annotations

import json
from pathlib import Path

import pystac
import rasterio
from typer.testing import CliRunner

from flows.cli.app import app
from pipeline.job.discover import discover, scene_stem
from tests.pipeline.formats.sample_data import S2_STACK, requires_data
from tests.pipeline.formats.stac_samples import ACQUIRED, split_s2
from tests.pipeline.formats.stac_schemas import validate

pytestmark = requires_data


def test_a_folder_of_items_is_a_folder_of_scenes(tmp_path):
    split_s2(tmp_path / "in" / "t33uuu", coarse={})
    (tmp_path / "in" / "t33uuu" / "notes.json").write_text('{"not": "stac"}')  # a sidecar, not a scene
    (scene,) = discover(str(tmp_path / "in"))
    assert (scene.kind, scene.uri) == ("stac", str(tmp_path / "in" / "t33uuu" / "item.json"))
    assert scene_stem(scene) == "S2A_T33UUU_20170216"  # outputs are named after the item's id


def test_items_sharing_an_id_in_one_folder_keep_their_file_names(tmp_path):
    item = split_s2(tmp_path / "in", coarse={})
    twin = item.with_name("copy.json")
    twin.write_text(item.read_text().replace('"item.json"', '"copy.json"'))
    other = tmp_path / "in" / "sub"
    other.mkdir()
    (other / "item.json").write_text(item.read_text())  # another folder: its own output folder, its id
    stems = {
        Path(s.uri).relative_to(tmp_path / "in").as_posix(): scene_stem(s)
        for s in discover(str(tmp_path / "in"))
    }
    assert stems == {"copy.json": "copy", "item.json": "item", "sub/item.json": "S2A_T33UUU_20170216"}


def test_run_on_a_stac_item_with_band_mapping(tmp_path, bundle_factory):
    item = split_s2(tmp_path / "in", eo=False)  # asset keys only: the channels need --bands
    bundle = bundle_factory(2, 4, ["land", "water"], 128, [4, 8])
    out = tmp_path / "out"
    args = ["run", str(item), str(out), "-m", str(bundle), "--bands", "ch1=blue,ch2=green,ch3=red,ch4=nir"]
    res = CliRunner(env={"COLUMNS": "200"}).invoke(app, args)
    assert res.exit_code == 0, res.output
    with rasterio.open(out / "S2A_T33UUU_20170216_labels.tif") as labels, rasterio.open(S2_STACK) as stack:
        assert (labels.crs, labels.transform, labels.shape) == (stack.crs, stack.transform, stack.shape)
    report = json.loads((out / "S2A_T33UUU_20170216_report.json").read_text())
    assert report["input"] == str(item) and report["shape"] == [4, 768, 1536]
    data = json.loads((out / "S2A_T33UUU_20170216_item.json").read_text())
    validate(data)
    made = pystac.Item.from_dict(data)
    assert made.datetime == ACQUIRED  # the scene's acquisition, not the processing time
    (link,) = made.get_links("derived_from")
    assert (link.href, link.media_type) == (str(item), pystac.MediaType.GEOJSON)

    unmapped = CliRunner().invoke(app, ["run", str(item), str(tmp_path / "out2"), "-m", str(bundle)])
    assert unmapped.exit_code == 1
    assert "no asset for channel 'ch1'" in unmapped.output and str(item) in unmapped.output
    assert not list(Path(tmp_path / "out2").glob("*_labels.tif"))
