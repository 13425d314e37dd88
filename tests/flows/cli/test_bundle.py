"""`tilewise bundle init` and `tilewise bundle info` (flows/cli/bundle.py) through the real app."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from flows.cli.app import app
from models.bundle import load_bundle


def test_init_makes_the_bundle_the_brief_describes(tmp_path: Path) -> None:
    out = tmp_path / "b3"
    args = ["bundle", "init", "--arch", "unet", "--spatial-dims", "3", "--in-channels", "2"]
    args += ["--classes", "bg, liver ,kidney", "--features", "4,8", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    b = load_bundle(out)
    assert b.config.spatial_dims == 3 and len(b.config.inputs.channels) == 2
    assert b.class_names == ["bg", "liver", "kidney"]
    assert b.config.architecture["name"] == "unet" and b.config.architecture["features"] == [4, 8]
    assert f"sha256 {b.hash[:12]}" in " ".join(res.output.split())


def test_info_never_truncates_the_hash(tmp_path: Path) -> None:
    out = tmp_path / "b"
    init = ["bundle", "init", "--classes", "land,water", "--features", "4,8", "--out", str(out)]
    assert CliRunner().invoke(app, init).exit_code == 0
    res = CliRunner(env={"COLUMNS": "60"}).invoke(app, ["bundle", "info", str(out)])
    assert res.exit_code == 0, res.output
    folded = "".join(line.strip(" │") for line in res.output.splitlines())  # a folded cell, joined back
    assert load_bundle(out).hash in folded
    assert "land" in res.output and "water" in res.output and "orientation" not in res.output  # 2-D


def test_refusals_are_one_line_and_leave_nothing(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "b"
    out.mkdir()
    res = runner.invoke(app, ["bundle", "init", "--classes", "a", "--out", str(out)])
    assert res.exit_code == 6
    assert res.output.strip() == f"error: {out}: exists; pass --overwrite to replace it"
    assert not any(out.iterdir())
    fresh = ["bundle", "init", "--out", str(tmp_path / "x")]
    res = runner.invoke(app, [*fresh, "--classes", " , "])
    assert res.exit_code == 2 and "give at least one class name" in res.output
    res = runner.invoke(app, [*fresh, "--classes", "a", "--features", "0,4"])
    assert res.exit_code == 2 and "positive integers" in res.output
    assert not (tmp_path / "x").exists()
