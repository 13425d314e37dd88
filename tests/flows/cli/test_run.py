"""`tilewise run`, `plan` and `info` (flows/cli/run.py) on real files."""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from monai.data.utils import dense_patch_slices
from typer.testing import CliRunner

from flows.cli.app import app
from pipeline.engine.lanes import cpu_lanes
from pipeline.job.memory import estimate_peak_mb, rss_mb

runner = CliRunner(env={"COLUMNS": "200"})  # one table row per line, so columns can be read back


def _tree(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under ``root``, with size and mtime for files (a folder's mtime moves when a
    temporary entry comes and goes, which is allowed)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
        for p in root.rglob("*")
    }


def _rows(output: str) -> list[dict[str, str]]:
    """The plan table as dicts keyed by column header (rich draws the header with heavy bars)."""
    lines = [line.replace("┃", "│") for line in output.splitlines()]
    lines = [line for line in lines if line.count("│") >= 2]
    cells = [[c.strip() for c in line.strip().strip("│").split("│")] for line in lines]
    return [dict(zip(cells[0], row, strict=True)) for row in cells[1:]]


def test_info_shows_reader_view(data):
    res = runner.invoke(app, ["info", str(data / "geo/solaris/road_mask_input.tif")])
    assert res.exit_code == 0, res.output
    assert "(1, 1300, 1300)" in res.output and "4326" in res.output and "uint16" in res.output
    res = runner.invoke(app, ["info", str(data / "medical/totalsegmentator/example_mr_sm.nii.gz")])
    assert res.exit_code == 0, res.output
    assert "RAS" in res.output and "(1, 117, 91, 20)" in res.output.replace("\n", "")


def test_plan_counts_windows_and_blocks_without_computing(tmp_path, data, bundle_factory, monkeypatch):
    bundle = bundle_factory(2, 3, ["a", "b"], 128, [4, 8])
    scene = tmp_path / "in" / "RGB.byte.tif"  # (3, 718, 791)
    scene.parent.mkdir()
    shutil.copy(data / "geo/rasterio/RGB.byte.tif", scene)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.chdir(tmp_path)

    def no_forward(*args: object, **kwargs: object) -> None:
        raise AssertionError("plan ran the model")

    monkeypatch.setattr(torch.nn.Module, "__call__", no_forward)
    before, bundle_before = _tree(tmp_path), _tree(bundle)

    res = runner.invoke(app, ["plan", str(scene), "-m", str(bundle), "--block-size", "256"])

    assert res.exit_code == 0, res.output
    rows = _rows(res.output)
    assert len(rows) == 1, res.output
    (row,) = rows
    # MONAI's own grid: interval int(roi * (1 - overlap)) with the bundle's default overlap 0.25
    windows = len(dense_patch_slices((718, 791), (128, 128), (96, 96)))
    assert windows == 64
    assert row["shape"] == "3x718x791" and row["patch"] == "128x128" and row["block"] == "256x256"
    assert row["windows"] == str(windows)
    assert row["blocks"] == str(math.ceil(718 / 256) * math.ceil(791 / 256)) == "12"
    # the worker's baseline (measured in the plan's own process) plus GDAL's cache and the block terms
    shapes = {"spatial": (718, 791), "roi": (128, 128), "block": (256, 256), "channels": 3, "classes": 2}
    terms = estimate_peak_mb(baseline_mb=0, **shapes, itemsize=1, batch_size=4, lanes=cpu_lanes(),
                             architecture={"features": [4, 8]})  # fmt: skip
    baseline = int(row["peak MB/worker"]) - terms  # a plain run's modules and model (no Prefect)
    assert 100 < baseline < rss_mb() + 1
    assert row["note"] == ""
    assert _tree(tmp_path) == before and _tree(bundle) == bundle_before
    assert not any((tmp_path / "tmp").iterdir())


def test_plan_reports_unusable_scene_inline(data, bundle_factory):
    bundle = bundle_factory(2, 4, ["a", "b"], 128, [4, 8])
    res = runner.invoke(app, ["plan", str(data / "geo/rasterio/RGB.byte.tif"), "-m", str(bundle)])
    assert res.exit_code == 0
    assert "expects 4" in res.output.replace("\n", "")


def test_plan_needs_a_model(data):
    res = runner.invoke(app, ["plan", str(data / "geo/rasterio/RGB.byte.tif")])
    assert res.exit_code == 2 and "--model is required" in res.output


def test_bad_config_is_one_line_with_exit_code(tmp_path, data, bundle_factory):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("tiling:\n  overlap: 1.5\n")
    bundle = bundle_factory(2, 3, ["a", "b"], 32, [4, 8])
    res = runner.invoke(
        app,
        [
            "run",
            str(data / "geo/rasterio/rgb-byte-tenth.tif"),
            str(tmp_path / "o"),
            "-m",
            str(bundle),
            "--config",
            str(cfg),
        ],
    )
    assert res.exit_code == 2
    assert "job.yaml" in res.output and "tiling.overlap" in res.output
    cfg.write_text("tiling: [unclosed\n")
    res = runner.invoke(app, ["run", "x.tif", str(tmp_path / "o"), "-m", str(bundle), "--config", str(cfg)])
    assert res.exit_code == 2 and "invalid YAML" in res.output


def _scene(stem: str, status: str, reason: str = "") -> SimpleNamespace:
    outputs = {"labels": f"/out/{stem}_labels.tif"} if status == "ok" else {}
    return SimpleNamespace(stem=stem, status=status, reason=reason, seconds=1.0, windows=4, outputs=outputs)


@pytest.mark.parametrize(
    ("results", "unchanged", "code"),
    [
        ([_scene("a", "ok"), _scene("b", "skipped", "exists")], 0, 0),
        ([_scene("a", "ok"), _scene("b", "failed", "b.tif: [corrupt] band 2")], 0, 1),
        ([], 0, 3),
        ([], 2, 0),
    ],
    ids=["all-ok", "one-failed", "nothing-found", "nothing-new"],
)
def test_run_exit_code_and_table_follow_the_scenes(
    tmp_path, data, bundle_factory, monkeypatch, results, unchanged, code
):
    import flows.oneoff

    seen: dict[str, object] = {}

    def job(cfg, *, progress, debug):
        seen.update(cfg=cfg, debug=debug)
        progress(str(data / "a.tif"), 0)(1, 2)  # the progress row takes block counts
        return SimpleNamespace(results=results, unchanged=unchanged)

    monkeypatch.setattr(flows.oneoff, "run_plain_job", job)  # a local one-off run: no Prefect
    bundle = bundle_factory(2, 3, ["a", "b"], 32, [4, 8])
    args = ["run", str(data / "geo/rasterio/rgb-byte-tenth.tif"), str(tmp_path / "o"), "-m", str(bundle)]
    res = runner.invoke(app, [*args, "--overlap", "0.5", "--block-size", "64x64"])
    assert res.exit_code == code, res.output
    assert seen["debug"] is False
    assert seen["cfg"].tiling.overlap == 0.5 and list(seen["cfg"].tiling.block_size) == [64, 64]
    for r in results:
        assert r.stem in res.output and r.status in res.output
    if code == 1:  # the reason is printed as written, brackets included
        assert "failed: b.tif: [corrupt] band 2" in res.output
    if code == 3:
        assert "no scenes found" in res.output
    if unchanged:
        assert "nothing new: 2 scene(s)" in res.output


def test_debug_reaches_the_job(tmp_path, data, bundle_factory, monkeypatch):
    import flows.oneoff

    seen: list[bool] = []
    monkeypatch.setattr(
        flows.oneoff,
        "run_plain_job",
        lambda cfg, *, progress, debug: seen.append(debug) or SimpleNamespace(results=[], unchanged=1),
    )
    bundle = bundle_factory(2, 3, ["a", "b"], 32, [4, 8])
    args = ["run", str(data / "geo/rasterio/rgb-byte-tenth.tif"), str(tmp_path / "o"), "-m", str(bundle)]
    assert runner.invoke(app, ["--debug", *args]).exit_code == 0
    assert runner.invoke(app, args).exit_code == 0
    assert seen == [True, False]


def test_narrow_output_wraps_names_instead_of_cutting_them(tmp_path, data, bundle_factory):
    """Piped into a file or a CI log, rich draws 80 columns: the scene and its shape must survive whole."""
    bundle = bundle_factory(2, 3, ["a", "b"], 128, [4, 8])
    scene = tmp_path / "big4" / "s4_landsat7_etm_rgb_subset_2026_11_29_utm18n_tile_0042.tif"
    scene.parent.mkdir()
    shutil.copy(data / "geo/rasterio/RGB.byte.tif", scene)
    res = CliRunner(env={"COLUMNS": "80"}).invoke(app, ["plan", str(scene), "-m", str(bundle)])
    assert res.exit_code == 0, res.output
    assert max(len(line) for line in res.output.splitlines()) <= 80
    body = [line for line in res.output.splitlines() if line.count("│") >= 2]  # the header has ┃
    cells = [[c.strip() for c in line.strip().strip("│").split("│")] for line in body]
    assert "".join(row[0] for row in cells) == str(scene)
    assert "".join(row[1] for row in cells) == "3x718x791"
