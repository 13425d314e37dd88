"""Outputs that cannot be written: a read-only output folder, and a full disk (simulated ENOSPC, and a
real, small tmpfs where this process may mount one). Failures are clean OutputErrors, no partial file
is ever left at a final path or beside it, and a rerun once there is room loses nothing."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli.app import app
from pipeline.errors import OutputError
from pipeline.job.config import JobConfig, load_config
from pipeline.job.skeleton import run_job

from .catalogue import TENTH, write_crop
from .conftest import finals, leftovers


def _mount(*args: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody can write, root included: a read-only bind mount as root, else mode 0555."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if not (_mount("--bind", str(folder), str(folder)) and _mount("-o", "remount,bind,ro", str(folder))):
        _umount(folder)
        pytest.skip("running as root without permission to mount: cannot make a read-only folder")
    try:
        yield folder
    finally:
        _umount(folder)


def _cfg(src: Path, out: Path, bundle: Path, **over: object) -> JobConfig:
    return load_config(None, {"input": str(src), "output": str(out), "model": str(bundle), **over})


def test_read_only_output_is_refused_up_front(read_only_folder, data, bundle2):
    with pytest.raises(OutputError, match="not writable") as err:
        run_job(_cfg(data / TENTH, read_only_folder, bundle2))
    assert str(read_only_folder) in str(err.value) and "\n" not in str(err.value)
    res = CliRunner().invoke(app, ["run", str(data / TENTH), str(read_only_folder), "-m", str(bundle2)])
    assert res.exit_code == 6, res.output
    text = " ".join(res.output.split())  # rich wraps at 80 columns under a test runner
    assert text.count("error:") == 1 and "not writable" in text and str(read_only_folder) in text, text
    assert "Traceback" not in res.output
    assert not list(read_only_folder.iterdir())


def _full_on(marker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The COG copy writes half its bytes, then the disk is full (only for outputs named ``marker``)."""
    import pipeline.formats.cog as cog

    real = cog.rasterio.shutil.copy

    def copy(src: object, dst: object, **kw: object) -> None:
        if marker not in str(dst):
            return real(src, dst, **kw)
        Path(str(dst)).write_bytes(b"II*\0" + b"\0" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(cog.rasterio.shutil, "copy", copy)


def test_disk_full_while_finalising_fails_cleanly_then_resumes(tmp_path, data, bundle2, monkeypatch):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for name in ("good.tif", "full.tif"):
        shutil.copy(data / TENTH, folder / name)
    _full_on("full_labels", monkeypatch)
    results = {r.stem: r for r in run_job(_cfg(folder, out, bundle2))}
    assert results["good"].status == "ok", results["good"].reason
    bad = results["full"]
    assert bad.status == "failed" and "No space left on device" in bad.reason and "\n" not in bad.reason
    assert "full_labels.tif" in bad.reason
    assert not finals(out, "full") and not leftovers(out)
    monkeypatch.undo()  # room again: the rerun only finalises, nothing is recomputed or lost
    (again,) = [r for r in run_job(_cfg(folder, out, bundle2)) if r.stem == "full"]
    assert again.status == "ok" and again.report["resumed"] and again.report["windows_computed"] == 0
    assert (out / "full_labels.tif").exists() and not leftovers(out)


def test_disk_full_in_the_work_store_is_an_output_error(tmp_path, data, bundle2, monkeypatch):
    import pipeline.execution.workstore as ws

    def full(path: Path, write: object) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(b"\0" * 100)
        tmp.unlink()  # what _atomic_bytes does on failure
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ws, "_atomic_bytes", full)
    (result,) = run_job(_cfg(data / TENTH, tmp_path / "out", bundle2))
    assert result.status == "failed" and "No space left on device" in result.reason
    assert str(data / TENTH) in result.reason and "internal error" not in result.reason
    assert not finals(tmp_path / "out", "rgb-byte-tenth")


def _du(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def test_real_full_tmpfs_fails_cleanly_and_resumes_byte_identical(tmp_path, data, bundle2):
    src = write_crop(data, tmp_path / "crop.tif")
    ref = tmp_path / "ref"
    over = {"outputs.probabilities": True, "outputs.keep_work": True}
    (clean,) = run_job(_cfg(src, ref, bundle2, **over))
    assert clean.status == "ok", clean.reason
    work, final = _du(ref / ".tilewise-work"), _du(ref) - _du(ref / ".tilewise-work")
    small = tmp_path / "small"
    small.mkdir()
    size_k = (work + final // 2) // 1024  # the work store fits; the final files do not
    if not _mount("-t", "tmpfs", "-o", f"size={size_k}k", "tmpfs", str(small)):
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated ENOSPC tests still ran")
    try:
        (first,) = run_job(_cfg(src, small, bundle2, **over))
        assert first.status == "failed" and "No space left on device" in first.reason, first.reason
        assert "\n" not in first.reason and "internal error" not in first.reason
        assert not finals(small, "crop") and not leftovers(small)
        assert _mount("-o", f"remount,size={4 * (work + final) // 1024 + 1024}k", str(small))
        (second,) = run_job(_cfg(src, small, bundle2, **over))
        assert second.status == "ok", second.reason
        for name in ("crop_labels.tif", "crop_probabilities.tif"):
            assert (small / name).read_bytes() == (ref / name).read_bytes()
        assert not leftovers(small)
    finally:
        _umount(small)
