"""Corrupt and hostile model bundles: refused before any scene is read, with one line naming the file.

A bad bundle refuses the whole job (every scene would use it): ``run_job`` raises ``BundleError``,
the CLI exits 5. Pickles are never unpickled by default, and even with ``trust_pickle`` they go
through ``torch.load(weights_only=True)``, which will not run the code a hostile pickle carries.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from flows.cli.app import app
from models.bundle import CONFIG_NAME, WEIGHTS_NAME, load_bundle
from pipeline.errors import BundleError
from pipeline.job.config import load_config
from pipeline.job.skeleton import run_job

from .catalogue import TENTH


class Hostile:
    """Unpickling this runs ``os.system``: the canonical malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (f"touch {self.marker}",))


def _state(b: Path) -> dict[str, torch.Tensor]:
    """The weights in memory (``load_file`` maps the file: rewriting it in place would SIGBUS)."""
    return {k: v.clone() for k, v in load_file(str(b / WEIGHTS_NAME)).items()}


def _copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    return dest


def _missing_key(b: Path) -> None:
    cfg = yaml.safe_load((b / CONFIG_NAME).read_text())
    del cfg["classes"]
    (b / CONFIG_NAME).write_text(yaml.safe_dump(cfg))


def _wrong_shape(b: Path) -> None:
    state = _state(b)
    key = next(k for k, v in state.items() if v.ndim == 4)
    state[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 2)
    save_file(state, str(b / WEIGHTS_NAME))


def _missing_tensor(b: Path) -> None:
    state = _state(b)
    state.pop(sorted(state)[0])
    save_file(state, str(b / WEIGHTS_NAME))


def _pickle_only(b: Path) -> None:
    torch.save(_state(b), b / "weights.pt")
    (b / WEIGHTS_NAME).unlink()


def _pickle_named_safetensors(b: Path) -> None:
    torch.save(_state(b), b / WEIGHTS_NAME)


def _truncated_weights(b: Path) -> None:
    raw = (b / WEIGHTS_NAME).read_bytes()
    (b / WEIGHTS_NAME).write_bytes(raw[: len(raw) // 2])


def _yaml_python_tag(b: Path) -> None:
    marker = b.parent / "yaml-ran"
    text = (b / CONFIG_NAME).read_text()
    (b / CONFIG_NAME).write_text(f'card: !!python/object/apply:os.system ["touch {marker}"]\n' + text)


def _not_yaml(b: Path) -> None:
    (b / CONFIG_NAME).write_bytes(b"\xff\xfe\x00garbage: [")


CORRUPT = {
    "missing_key": (_missing_key, "classes", CONFIG_NAME),
    "wrong_tensor_shape": (_wrong_shape, "has shape", WEIGHTS_NAME),
    "missing_tensor": (_missing_tensor, "lack tensor", WEIGHTS_NAME),
    "pickle_instead_of_safetensors": (_pickle_only, "pickle", "weights.pt"),
    "pickle_named_safetensors": (_pickle_named_safetensors, "unreadable safetensors", WEIGHTS_NAME),
    "truncated_safetensors": (_truncated_weights, "unreadable safetensors", WEIGHTS_NAME),
    "yaml_python_tag": (_yaml_python_tag, "yaml", CONFIG_NAME),
    "not_yaml": (_not_yaml, "yaml", CONFIG_NAME),
}


@pytest.mark.parametrize("name", list(CORRUPT))
def test_corrupt_bundle_refuses_the_job(name, tmp_path, data, bundle2):
    damage, word, culprit = CORRUPT[name]
    b = _copy(bundle2, tmp_path / "bundle")
    damage(b)
    cfg = load_config(None, {"input": str(data / TENTH), "output": str(tmp_path / "out"), "model": str(b)})
    with pytest.raises(BundleError) as err:
        run_job(cfg)
    msg = str(err.value)
    assert str(b / culprit) in msg and word in msg.lower() and "\n" not in msg, msg
    assert not (tmp_path / "out").exists()  # refused before anything was written
    assert not (tmp_path / "yaml-ran").exists()  # no YAML tag was ever constructed
    res = CliRunner().invoke(app, ["bundle", "info", str(b)])
    assert res.exit_code == 5 and "Traceback" not in res.output
    assert " ".join(res.output.split()).count("error:") == 1


def test_trust_pickle_loads_plain_tensors_only(tmp_path, bundle2):
    b = _copy(bundle2, tmp_path / "bundle")
    _pickle_only(b)
    with pytest.raises(BundleError, match="trust_pickle"):
        load_bundle(b)
    loaded = load_bundle(b, trust_pickle=True)  # an honest checkpoint loads when trusted
    assert loaded.weights == b / "weights.pt"
    loaded.build()
    marker = tmp_path / "pwned"
    (b / "weights.pt").write_bytes(pickle.dumps({"x": Hostile(marker)}))
    with pytest.raises(BundleError, match="weights_only"):
        load_bundle(b, trust_pickle=True).build()
    assert not marker.exists()  # the payload never ran


def test_cli_run_with_a_pickle_bundle_exits_5(tmp_path, data, bundle2):
    b = _copy(bundle2, tmp_path / "bundle")
    _pickle_only(b)
    res = CliRunner().invoke(app, ["run", str(data / TENTH), str(tmp_path / "out"), "-m", str(b)])
    text = " ".join(res.output.split())
    assert res.exit_code == 5 and "pickle" in text and str(b / "weights.pt") in text, text
    assert "Traceback" not in res.output
