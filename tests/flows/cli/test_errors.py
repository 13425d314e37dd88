"""The shared error printer (flows/cli/errors.py), through the real app: every command reports a
TilewiseError as one redacted line with its family's exit code, and re-raises it under ``--debug``."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import models.bundle.sources
import models.training
import pipeline.job.config
import pipeline.job.discover
import pipeline.job.evaluate
from flows.cli.app import app
from flows.cli.errors import print_error
from pipeline.errors import (
    BundleError,
    ConfigError,
    ExecutionError,
    FormatError,
    InputError,
    OutputError,
    TilewiseError,
)

FAMILIES = [TilewiseError, ConfigError, InputError, FormatError, BundleError, OutputError, ExecutionError]
LEAKY = "cannot read s3://KEYID:hunter22@bucket/a.tif?X-Amz-Signature=abc123&part=1"
SHOWN = "error: cannot read s3://***@bucket/a.tif?X-Amz-Signature=***&part=1"

# each command, and the function inside it that the test makes fail
COMMANDS = {
    "run": (["run", "in.tif", "out", "-m", "b"], pipeline.job.config, "load_config"),
    "plan": (["plan", "in.tif", "-m", "b"], pipeline.job.config, "load_config"),
    "info": (["info", "in.tif"], pipeline.job.discover, "discover"),
    "bundle": (["bundle", "info", "b"], models.bundle.sources, "open_model"),
    "train": (["train", "-i", "a.tif", "-l", "b.tif", "--out", "o"], models.training, "train"),
    "evaluate": (["evaluate", "b", "-i", "a.tif", "-l", "b.tif"], pipeline.job.evaluate, "evaluate_bundle"),
    "serve": (["serve", "-c", "job.yaml"], pipeline.job.config, "load_config"),
}


def _raising(monkeypatch: pytest.MonkeyPatch, command: str, exc: Exception) -> list[str]:
    args, module, name = COMMANDS[command]

    def fail(*a: object, **k: object) -> None:
        raise exc

    monkeypatch.setattr(module, name, fail)
    return args


def _one_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("cls", FAMILIES, ids=[c.__name__ for c in FAMILIES])
def test_every_command_prints_one_redacted_line_with_the_family_code(command, cls, monkeypatch):
    args = _raising(monkeypatch, command, cls(LEAKY))
    res = CliRunner(env={"COLUMNS": "60"}).invoke(app, args)  # narrow: the line must still not wrap
    assert res.exit_code == cls.exit_code, res.output
    assert _one_line(res.output) == SHOWN
    assert "hunter22" not in res.output and "abc123" not in res.output


@pytest.mark.parametrize("command", COMMANDS)
def test_debug_reraises_in_every_command(command, monkeypatch):
    exc = BundleError("bad weights", path="b/weights.safetensors")
    args = _raising(monkeypatch, command, exc)
    res = CliRunner().invoke(app, ["--debug", *args])
    assert res.exception is exc, res.output
    assert "error:" not in res.output
    # the flag lives in the invocation, not the process: the next run is quiet again
    quiet = CliRunner().invoke(app, args)
    assert quiet.exit_code == 5 and _one_line(quiet.output) == "error: b/weights.safetensors: bad weights"


def test_message_is_plain_text_not_markup(capsys):
    print_error(InputError("no band [bold]3[/bold] in [red]x.tif"))
    assert capsys.readouterr().err == "error: no band [bold]3[/bold] in [red]x.tif\n"


def test_secrets_known_only_at_print_time_are_redacted(capsys, monkeypatch):
    exc = OutputError("upload refused for token tw-late-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tw-late-secret")
    print_error(exc)
    assert capsys.readouterr().err == "error: upload refused for token ***\n"
