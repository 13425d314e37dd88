"""Loading: one read of the folder, errors that name the file and field, no unpickling by default,
and TorchScript / torch.export archives as self-contained models."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.bundle import CONFIG_NAME, WEIGHTS_NAME, load_archive, load_bundle
from models.nets.registry import build_model
from pipeline.errors import BundleError

from .conftest import read_yaml, run, write_yaml


def test_load_reads_the_folder_once(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected_hash = hashlib.sha256(
        (bundle_dir / CONFIG_NAME).read_bytes() + (bundle_dir / WEIGHTS_NAME).read_bytes()
    ).hexdigest()
    reads: list[str] = []
    real = Path.read_bytes

    def counting(self: Path) -> bytes:
        reads.append(self.name)
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", counting)
    b = load_bundle(bundle_dir)
    assert sorted(reads) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    # everything later comes from what was read: the files may even be gone
    (bundle_dir / CONFIG_NAME).unlink()
    (bundle_dir / WEIGHTS_NAME).unlink()
    x = torch.randn(1, 4, 32, 32)
    assert b.hash == expected_hash
    assert torch.equal(run(b.build(), x), run(b.build(), x))
    assert b.param_count() > 0
    assert sorted(reads) == sorted([CONFIG_NAME, WEIGHTS_NAME])


def test_builds_are_independent(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    first, second = b.build(), b.build()
    with torch.no_grad():
        next(first.parameters()).add_(1.0)  # fine-tuning one net must not touch the next
    x = torch.randn(1, 4, 16, 16)
    assert torch.equal(run(second, x), run(b.build(), x))
    assert not torch.equal(run(first, x), run(second, x))


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda d: d.pop("classes"), "classes: Field required"),
        (lambda d: d.pop("patch_size"), "patch_size"),
        (lambda d: d["architecture"].pop("out_channels"), "architecture.out_channels"),
        (lambda d: d["classes"].pop(), "classes lists 2"),
        (lambda d: d["architecture"].update(in_channels=5), "in_channels is 5 but inputs.channels lists 4"),
        (lambda d: d["classes"][0].update(color="red"), "classes.0.color"),
        (lambda d: d.update(patch_size=[32, 32, 32]), "patch_size must be 2"),
        (lambda d: d.update(overlap=1.0), "overlap"),
        (lambda d: d["inputs"]["normalization"]["mean"].pop(), "normalization.mean has 3 values"),
        (lambda d: d["inputs"]["normalization"].update(kind="ct_window"), "ct_window needs"),
        (lambda d: d.update(colour_map="x"), "colour_map"),
        (lambda d: d.update(format_version=2), "format_version"),
        (lambda d: d["architecture"].update(name="resnet"), "unknown architecture 'resnet'"),
        (lambda d: d["architecture"].update(features=[4, 8, 16]), "lack tensor 'downs.2.0.weight'"),
        (lambda d: d["architecture"].update(features=[4, 6]), "the architecture expects"),
        (lambda d: d["architecture"].update(name="torchscript"), "needs a 'path' to the archive"),
    ],
)
def test_invalid_yaml_names_file_and_field(bundle_dir: Path, edit: Any, fragment: str) -> None:
    data = read_yaml(bundle_dir)
    edit(data)
    write_yaml(bundle_dir, data)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_dir)
    assert fragment in str(info.value)
    assert str(bundle_dir) in str(info.value)


def test_missing_and_unreadable(tmp_path: Path, bundle_dir: Path) -> None:
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"no model\.yaml"):
        load_bundle(tmp_path / "empty")
    (bundle_dir / CONFIG_NAME).write_text("name: [unclosed\n")
    with pytest.raises(BundleError, match="not valid YAML"):
        load_bundle(bundle_dir / CONFIG_NAME)
    (bundle_dir / CONFIG_NAME).write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(BundleError, match="YAML"):  # safe loader refuses python tags
        load_bundle(bundle_dir)


def test_weights_file_is_found_or_refused(bundle_dir: Path) -> None:
    (bundle_dir / WEIGHTS_NAME).rename(bundle_dir / "other.safetensors")
    assert load_bundle(bundle_dir).weights == bundle_dir / "other.safetensors"  # the only one
    (bundle_dir / "third.safetensors").write_bytes((bundle_dir / "other.safetensors").read_bytes())
    with pytest.raises(BundleError, match="several safetensors files"):
        load_bundle(bundle_dir)
    (bundle_dir / "other.safetensors").unlink()
    (bundle_dir / "third.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(BundleError, match="unreadable safetensors file"):
        load_bundle(bundle_dir)
    (bundle_dir / "third.safetensors").unlink()
    with pytest.raises(BundleError, match=r"no weights\.safetensors"):
        load_bundle(bundle_dir)


def test_wrong_tensor_shape_names_the_tensor(bundle_dir: Path) -> None:
    state = load_file(str(bundle_dir / WEIGHTS_NAME))
    state["final_conv.weight"] = torch.zeros(5, 4, 1, 1)
    save_file(state, str(bundle_dir / WEIGHTS_NAME))
    with pytest.raises(BundleError, match=r"'final_conv.weight' has shape \(5, 4, 1, 1\)") as info:
        load_bundle(bundle_dir)
    assert WEIGHTS_NAME in str(info.value)
    del state["final_conv.weight"]
    save_file(state, str(bundle_dir / WEIGHTS_NAME))
    with pytest.raises(BundleError, match=r"lack tensor 'final_conv\.weight'"):
        load_bundle(bundle_dir)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_pickle_refused_unless_trusted(bundle_dir: Path, tmp_path: Path) -> None:
    b = load_bundle(bundle_dir)
    net = b.build()
    x = torch.randn(1, 4, 16, 16)
    (bundle_dir / WEIGHTS_NAME).unlink()
    torch.save(net.state_dict(), bundle_dir / "model.pth")
    with pytest.raises(BundleError, match="pickle") as info:
        load_bundle(bundle_dir)
    assert "trust_pickle=True" in str(info.value) and "model.pth" in str(info.value)
    trusted = load_bundle(bundle_dir, trust_pickle=True)
    assert torch.equal(run(trusted.build(), x), run(net, x))
    # even when trusted, weights_only=True refuses a payload that would run code
    marker = tmp_path / "pwned"
    (bundle_dir / "model.pth").write_bytes(pickle.dumps({"w": _Evil(marker)}))
    with pytest.raises(BundleError, match="weights_only"):
        load_bundle(bundle_dir, trust_pickle=True).build()
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_export_archive_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    src = load_bundle(bundle_dir)
    net = src.build()
    x = torch.randn(1, 4, 32, 32)
    folder = tmp_path / "exported"
    folder.mkdir()
    torch.export.save(torch.export.export(net, (x,)), str(folder / "model.pt2"))
    data = src.config.model_dump(mode="json")
    data["architecture"] = {"name": "export", "path": "model.pt2", "in_channels": 4, "out_channels": 3}
    write_yaml(folder, data)
    b = load_bundle(folder)
    assert b.weights is None and b.archive == folder / "model.pt2"
    content = (folder / CONFIG_NAME).read_bytes() + (folder / "model.pt2").read_bytes()
    assert b.hash == hashlib.sha256(content).hexdigest()
    assert torch.allclose(run(b.build(), x), run(net, x), atol=1e-5)
    assert b.param_count() == sum(p.numel() for p in net.parameters())
    data["architecture"]["path"] = "model.ts"
    write_yaml(folder, data)
    with pytest.raises(BundleError, match=r"must have the \.pt2 suffix"):
        load_bundle(folder)
    data["architecture"]["path"] = "gone.pt2"
    write_yaml(folder, data)
    with pytest.raises(BundleError, match="model archive not found"):
        load_bundle(folder)


def _tiny_unet() -> torch.nn.Module:
    torch.manual_seed(1)
    config = {"name": "unet", "spatial_dims": 2, "in_channels": 2, "out_channels": 3, "features": [4, 8]}
    return build_model(config).eval()


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_torchscript_round_trip(tmp_path: Path) -> None:
    net = _tiny_unet()
    x = torch.randn(1, 2, 32, 32)
    path = tmp_path / "model.ts"
    torch.jit.trace(net, x).save(str(path))
    loaded = load_archive(path)
    assert not loaded.training
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-5)
    from_bytes = load_archive(path, path.read_bytes())
    with torch.no_grad():
        assert torch.allclose(from_bytes(x), net(x), atol=1e-5)


def test_export_round_trip(tmp_path: Path) -> None:
    net = _tiny_unet()
    x = torch.randn(1, 2, 37, 29)  # odd size: padding is captured in the graph
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(net, (x,)), str(path))
    loaded = load_archive(path)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-5)


def test_pickle_checkpoint_is_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(_tiny_unet().state_dict(), path)
    with pytest.raises(BundleError, match="TorchScript"):
        load_archive(path)
    with pytest.raises(BundleError, match="not found"):
        load_archive(tmp_path / "missing.ts")
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match=r"torch\.export"):
        load_archive(tmp_path / "junk.pt2")
