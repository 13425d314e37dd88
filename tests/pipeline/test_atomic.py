"""Atomic writes and the clean-up of what a crashed run left half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.atomic import TEMP_MARK, atomic_path, clean_stale_temps
from pipeline.errors import OutputError


def test_a_crashed_runs_temporaries_are_removed_at_any_depth_but_not_in_kept_folders(tmp_path):
    out = tmp_path / "out"
    deep = out / "a" / "b"
    deep.mkdir(parents=True)
    (out / f"x_labels.tif{TEMP_MARK}1").write_bytes(b"half")
    (deep / f"y_labels.tif{TEMP_MARK}2").write_bytes(b"half")  # a mirrored subfolder's scene
    (deep / f"y_labels.zarr{TEMP_MARK}3" / "0").mkdir(parents=True)
    work = out / ".tilewise-work" / "scene"
    work.mkdir(parents=True)
    (work / f"kept{TEMP_MARK}4").write_bytes(b"resumable")
    store = out / "z_labels.zarr"
    (store / f"chunk{TEMP_MARK}5").mkdir(parents=True)  # inside a store: not ours to judge
    (deep / "y_labels.tif").write_bytes(b"done")
    assert clean_stale_temps(out, keep=(".tilewise-work",)) == 3
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert left == [".tilewise-work/scene/kept" + TEMP_MARK + "4", "a/b/y_labels.tif"]
    assert (store / f"chunk{TEMP_MARK}5").is_dir()


def test_a_failed_write_leaves_nothing_and_refuses_to_overwrite(tmp_path):
    dest = tmp_path / "x.tif"
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        Path(tmp).write_bytes(b"partial")
        raise RuntimeError("writer died")
    assert list(tmp_path.iterdir()) == []
    dest.write_bytes(b"old")
    with pytest.raises(OutputError, match="--overwrite"), atomic_path(dest) as tmp:
        Path(tmp).write_bytes(b"new")
    assert dest.read_bytes() == b"old"
