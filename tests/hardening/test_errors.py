"""The error model: one root, builtin mix-ins, one exit code per family, one line without ``--debug``
and the full traceback with it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

import pipeline.job.discover
from flows.cli.app import app
from pipeline.errors import (
    BundleError,
    ConfigError,
    ExecutionError,
    FormatError,
    InputError,
    OutputError,
    TilewiseError,
)

FAMILIES = [
    (TilewiseError, Exception, 1),
    (ConfigError, ValueError, 2),
    (InputError, ValueError, 3),
    (FormatError, ValueError, 4),
    (BundleError, ValueError, 5),
    (OutputError, OSError, 6),
    (ExecutionError, RuntimeError, 7),
]


def _one_message(output: str) -> str:
    text = " ".join(output.split())  # rich wraps long lines at the runner's 80 columns
    assert text.startswith("error:") and text.count("error:") == 1 and "Traceback" not in output, output
    return text


@pytest.mark.parametrize(("cls", "builtin", "code"), FAMILIES, ids=[f[0].__name__ for f in FAMILIES])
def test_each_family_has_its_exit_code_and_one_line(cls, builtin, code, monkeypatch):
    assert issubclass(cls, TilewiseError) and issubclass(cls, builtin) and cls.exit_code == code

    def fail(*args: object, **kwargs: object) -> None:
        raise cls("what went wrong", path="/in/scene 1.tif")

    monkeypatch.setattr(pipeline.job.discover, "discover", fail)
    res = CliRunner().invoke(app, ["info", "/in/scene 1.tif"])
    assert res.exit_code == code
    assert _one_message(res.output) == "error: /in/scene 1.tif: what went wrong"


def test_real_triggers_map_to_their_codes(tmp_path, data, bundle2):
    runner = CliRunner()
    (tmp_path / "empty.tif").write_bytes(b"")
    cases = [
        (["run", "x.tif", str(tmp_path / "o"), "-m", str(bundle2), "--overlap", "1.5"], 2, "tiling.overlap"),
        (["info", str(tmp_path / "missing.tif")], 3, "no such file"),
        (["info", str(tmp_path / "empty.tif")], 4, "empty file"),
        (["bundle", "info", str(tmp_path)], 5, "no model.yaml"),
        (["bundle", "init", "--out", str(bundle2), "--classes", "a,b"], 6, "exists"),
    ]
    for args, code, words in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == code, (args, res.output)
        assert words in _one_message(res.output), res.output


def test_debug_shows_the_traceback(tmp_path):
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    cmd = [sys.executable, "-m", "flows.cli"]
    quiet = subprocess.run([*cmd, "info", str(empty)], capture_output=True, text=True)
    loud = subprocess.run([*cmd, "--debug", "info", str(empty)], capture_output=True, text=True)
    assert quiet.returncode == 4 and "Traceback" not in quiet.stderr + quiet.stdout
    assert loud.returncode != 0 and "Traceback (most recent call last)" in loud.stderr
    assert "pipeline.errors.FormatError" in loud.stderr and "geotiff.py" in loud.stderr
