"""`tilewise plan` and `tilewise info` on real files, and config validation errors."""

from __future__ import annotations

from typer.testing import CliRunner

from flows.cli.main import app
from pipeline.core.tiling import BlockPlan

runner = CliRunner()


def test_info_shows_reader_view(data):
    res = runner.invoke(app, ["info", str(data / "geo/solaris/road_mask_input.tif")])
    assert res.exit_code == 0, res.output
    assert "(1, 1300, 1300)" in res.output and "4326" in res.output and "uint16" in res.output
    res = runner.invoke(app, ["info", str(data / "medical/totalsegmentator/example_mr_sm.nii.gz")])
    assert res.exit_code == 0, res.output
    assert "RAS" in res.output and "(1, 117, 91, 20)" in res.output.replace("\n", "")


def test_plan_counts_windows_and_blocks_without_computing(data, bundle_factory):
    bundle = bundle_factory(2, 3, ["a", "b"], 128, [4, 8])
    res = runner.invoke(
        app, ["plan", str(data / "geo/rasterio/RGB.byte.tif"), "-m", str(bundle), "--block-size", "256"]
    )
    assert res.exit_code == 0, res.output
    expected = BlockPlan.build((718, 791), 128, 0.25, 256)
    assert str(expected.window_count) in res.output
    assert "12" in res.output  # 3 x 4 blocks


def test_plan_reports_unusable_scene_inline(data, bundle_factory):
    bundle = bundle_factory(2, 4, ["a", "b"], 128, [4, 8])
    res = runner.invoke(app, ["plan", str(data / "geo/rasterio/RGB.byte.tif"), "-m", str(bundle)])
    assert res.exit_code == 0
    assert "expects 4" in res.output.replace("\n", "")


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
