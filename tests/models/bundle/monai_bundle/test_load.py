"""Reading MONAI bundles: what is mapped, what is refused (one line naming the file), and that no
``$`` code in the config ever runs unless the user trusts it. Untrained weights suffice here; the
trained bundles are compared with MONAI itself in test_peer.py."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.bundle.monai_bundle import is_monai_bundle
from models.bundle.monai_bundle.load import load_monai_bundle
from models.bundle.sources import model_kind, open_model
from pipeline.errors import BundleError
from tests.models.bundle.monai_bundle import zoo
from tests.models.bundle.monai_bundle.conftest import PATCH, ct_config


def untrained_state(**net: Any) -> dict[str, torch.Tensor]:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(**{**zoo.NET, **net}).state_dict()


def make(tmp_path: Path, edit: Any = None, state: Any = None, name: str = "b") -> Path:
    config = ct_config()
    if edit is not None:
        edit(config)
    return zoo.write_bundle(
        tmp_path / name, name, untrained_state() if state is None else state, config, PATCH
    )


def test_the_zoo_layout_is_its_own_kind_and_maps_onto_a_bundle(tmp_path: Path) -> None:
    folder = make(tmp_path)
    assert is_monai_bundle(folder) and model_kind(folder) == "monai"
    bundle = open_model(folder)
    cfg = bundle.config
    assert bundle.kind == "monai" and bundle.class_names == zoo.CLASSES
    assert cfg.architecture["name"] == "monai_config" and cfg.architecture["network_def"]["out_channels"] == 4
    norm = cfg.inputs.normalization
    assert (norm.kind, norm.center, norm.width, norm.out_min, norm.out_max) == (
        "ct_window",
        50.0,
        500.0,
        0,
        1,
    )
    assert cfg.patch_size == PATCH and cfg.overlap == 0.5 and cfg.blend == "gaussian" and cfg.batch_size == 4
    assert cfg.orientation == "RAS" and cfg.target_spacing is None
    assert (cfg.output_activation, cfg.activation_stage) == ("softmax", "blended")
    net = bundle.build()
    x = torch.randn(1, 1, *PATCH)
    from monai.networks.nets import UNet

    ref = UNet(**zoo.NET)
    ref.load_state_dict(untrained_state())
    with torch.no_grad():
        np.testing.assert_array_equal(net(x).numpy(), ref.eval()(x).numpy())


def test_code_outside_the_subtrees_used_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    def edit(c: dict) -> None:
        c["run"] = [f"$__import__('pathlib').Path({str(marker)!r}).touch()"]
        c["initialize"] = c["run"]
        c["imports"] = ["$import os"]

    bundle = open_model(make(tmp_path, edit))
    bundle.build()
    assert not marker.exists()


def test_code_in_a_subtree_used_is_refused_unless_trusted(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    touch = f"__import__('pathlib').Path({str(marker)!r}).touch()"

    def edit(c: dict) -> None:
        c["preprocessing"]["transforms"][3]["a_min"] = f"${touch} or -200.0"
        c["network_def"]["channels"] = "$[8, 16, 32]"

    folder = make(tmp_path, edit)
    with pytest.raises(BundleError, match=r"inference\.json: .*is a \$ expression.*--trust-code"):
        open_model(folder)
    assert not marker.exists()
    bundle = open_model(folder, options={"trust_code": True})  # the user trusts it: MONAI evaluates it
    assert marker.exists() and bundle.config.inputs.normalization.center == 50.0
    net = bundle.build()  # built by MONAI with the expression evaluated: the same net as written plainly
    assert set(net.state_dict()) == set(untrained_state())


def test_a_network_target_outside_monai_nets_is_never_imported(tmp_path: Path) -> None:
    def edit(c: dict) -> None:
        c["network_def"] = {
            "_target_": "subprocess.Popen",
            "args": ["true"],
            "in_channels": 1,
            "out_channels": 4,
        }

    with pytest.raises(BundleError, match=r"subprocess\.Popen.*not a class of monai\.networks\.nets"):
        open_model(make(tmp_path, edit))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["preprocessing"]["transforms"].insert(
                3, {"_target_": "CropForegroundd", "keys": "image"}
            ),
            r"preprocessing#3 uses CropForegroundd, which tilewise cannot apply block-wise; supported: "
            r"LoadImaged, EnsureChannelFirstd, Orientationd, Spacingd, ScaleIntensityRanged, "
            r"NormalizeIntensityd, EnsureTyped$",
        ),
        (
            lambda c: c["postprocessing"]["transforms"].append(
                {"_target_": "Lambdad", "keys": "pred", "func": "x"}
            ),
            r"postprocessing#4 uses Lambdad.*supported: Activationsd, AsDiscreted, "
            r"KeepLargestConnectedComponentd",
        ),
        (
            lambda c: c["inferer"].update(_target_="SimpleInferer"),
            "inferer is SimpleInferer.*SlidingWindowInferer",
        ),
        (lambda c: c["inferer"].update(mode="cosine"), "inferer mode 'cosine'"),
        (
            lambda c: c["preprocessing"]["transforms"].insert(
                3, {"_target_": "Spacingd", "keys": "image", "pixdim": [1, 1, 1], "mode": "nearest"}
            ),
            "mode 'nearest'; tilewise resamples images linearly",
        ),
        (lambda c: c.pop("inferer"), "the config has no 'inferer'"),
        (
            lambda c: c["network_def"].update(in_channels=2),
            "metadata says 1 input channels but network_def has in_channels 2",
        ),
    ],
)
def test_what_tilewise_cannot_apply_is_refused_in_one_line(tmp_path: Path, edit: Any, message: str) -> None:
    state = (
        untrained_state(in_channels=2) if "in_channels=2" in message or "in_channels 2" in message else None
    )
    with pytest.raises(BundleError, match=message) as err:
        open_model(make(tmp_path, edit, state))
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def test_weights_missing_mismatched_or_needing_pickle(tmp_path: Path) -> None:
    folder = make(tmp_path)
    (folder / "models" / "model.pt").unlink()
    with pytest.raises(BundleError, match=r"no weights: expected one of models/model\.pt"):
        open_model(folder)
    torch.save(untrained_state(channels=[4, 8, 16]), folder / "models" / "model.pt")
    with pytest.raises(
        BundleError, match=r"model\.pt: tensor '.*' has shape .* but the architecture expects"
    ):
        open_model(folder)
    torch.save(
        {"state_dict": untrained_state(), "args": argparse.Namespace(lr=1)}, folder / "models" / "model.pt"
    )
    with pytest.raises(
        BundleError,
        match=r"model\.pt: cannot load weights: the checkpoint needs a full unpickle.*--trust-pickle",
    ):
        open_model(folder)
    assert open_model(folder, trust_pickle=True).num_classes == 4  # the user's own checkpoint, trusted


def test_a_torchscript_bundle_needs_no_network_def(tmp_path: Path) -> None:
    folder = make(tmp_path)
    from monai.networks.nets import UNet

    net = UNet(**zoo.NET).eval()
    net.load_state_dict(untrained_state())
    torch.jit.save(torch.jit.script(net), str(folder / "models" / "model.ts"))
    (folder / "models" / "model.pt").unlink()
    bundle = open_model(folder)
    assert bundle.config.architecture["name"] == "torchscript"
    x = torch.randn(2, 1, *PATCH)
    with torch.no_grad():
        np.testing.assert_allclose(bundle.build()(x).numpy(), net(x).numpy(), atol=1e-6)


def test_normalisations_map_onto_tilewise_kinds(tmp_path: Path) -> None:
    def norm(args: dict, tag: str) -> Any:
        def edit(c: dict) -> None:
            c["preprocessing"]["transforms"][3] = {"_target_": args.pop("_t"), "keys": "image", **args}

        return load_monai_bundle(make(tmp_path, edit, name=tag)).config.inputs.normalization

    n = norm({"_t": "ScaleIntensityRanged", "a_min": -100, "a_max": 100, "b_min": -1, "b_max": 1}, "s")
    assert n.kind == "scale" and (n.factor, n.offset) == pytest.approx((0.01, 0.0))
    n = norm({"_t": "NormalizeIntensityd", "nonzero": True}, "z")
    assert (n.kind, n.nonzero, n.channel_wise) == ("scene_zscore", True, False)
    n = norm({"_t": "NormalizeIntensityd", "subtrahend": [10.0], "divisor": [2.0]}, "f")
    assert (n.kind, n.mean, n.std) == ("zscore", [10.0], [2.0])


def test_keep_largest_component_is_recorded(tmp_path: Path) -> None:
    def edit(c: dict) -> None:
        keep = {
            "_target_": "KeepLargestConnectedComponentd",
            "keys": "pred",
            "applied_labels": 2,
            "independent": False,
        }
        c["postprocessing"]["transforms"].insert(3, keep)

    post = open_model(make(tmp_path, edit)).config.postprocess
    assert post is not None and post.keep_largest and post.applied_labels == [2] and not post.independent


@pytest.mark.parametrize(
    ("post", "invert"),
    [
        (["Activationsd", "Invertd", "AsDiscreted"], "scores"),  # the zoo's: scores back, then the argmax
        (["Activationsd", "AsDiscreted", "Invertd"], "labels"),  # labels back (nearest, as MONAI would)
        (["Activationsd", "Invertd(nearest)", "AsDiscreted"], "labels"),
    ],
)
def test_spacingd_lays_out_monais_grid_and_invertd_says_how_labels_go_back(
    tmp_path: Path, post: list[str], invert: str
) -> None:
    def edit(c: dict) -> None:
        c["preprocessing"]["transforms"].insert(
            3, {"_target_": "Spacingd", "keys": "image", "pixdim": [2, 2, 2]}
        )
        specs = {
            "Activationsd": {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            "AsDiscreted": {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            "Invertd": {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing",
                        "orig_keys": "image", "nearest_interp": False},
            "Invertd(nearest)": {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing",
                                 "orig_keys": "image"},
        }  # fmt: skip
        c["postprocessing"]["transforms"] = [specs[name] for name in post]

    cfg = open_model(make(tmp_path, edit)).config
    assert (cfg.target_spacing, cfg.spacing_grid, cfg.invert) == ([2.0, 2.0, 2.0], "monai", invert)


def test_a_spacingd_grid_tilewise_cannot_lay_out_is_refused(tmp_path: Path) -> None:
    def edit(c: dict) -> None:
        spacing = {"_target_": "Spacingd", "keys": "image", "pixdim": [2, 2, 2], "scale_extent": True}
        c["preprocessing"]["transforms"].insert(3, spacing)

    with pytest.raises(BundleError, match=r"inference\.json: preprocessing#3 \(Spacingd\): .*scale_extent"):
        open_model(make(tmp_path, edit))


def test_the_metadata_json_must_be_json(tmp_path: Path) -> None:
    folder = make(tmp_path)
    (folder / "configs" / "metadata.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"metadata\.json: not readable JSON"):
        open_model(folder)
    meta = zoo.metadata("b", PATCH)
    bad = copy.deepcopy(meta)
    bad["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": "a", "1": "a", "2": "b", "3": "c"}
    (folder / "configs" / "metadata.json").write_text(json.dumps(bad))
    with pytest.raises(BundleError, match="not unique"):
        open_model(folder)
