"""MONAI bundles in the model zoo's layout and config style, briefly trained on the real CT/MR volumes.

Nothing here is committed as data: ``make_bundle`` writes ``configs/metadata.json``,
``configs/inference.json`` and ``models/model.pt`` (a state dict, as the zoo ships it) into a folder,
after training a small U-Net for a few seconds so its labels have structure. The inference config is
the zoo's: imports, a device expression, ``network`` as an expression, an ignite evaluator, and
``SaveImaged``, so ``python -m monai.bundle run`` runs it as MONAI users do, and tilewise must read
it without evaluating any of that code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

CT = "medical/totalsegmentator/example_ct_sm.nii.gz"
CT_SEG = "medical/totalsegmentator/example_seg.nii.gz"
MR = "medical/totalsegmentator/example_mr_sm.nii.gz"
MR_SEG = "medical/totalsegmentator/example_seg_mr.nii.gz"
CLASSES = ["background", "liver", "spleen", "kidney"]
LABEL_IDS = {1: [5], 2: [1], 3: [2, 3]}  # TotalSegmentator ids of each class (the same in CT and MR)
CT_WINDOW = {"a_min": -200.0, "a_max": 300.0, "b_min": 0.0, "b_max": 1.0, "clip": True}
NET = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": len(CLASSES),
    "channels": [8, 16, 32],
    "strides": [2, 2],
    "num_res_units": 0,
    "norm": "batch",
}


def ras(path: Path) -> np.ndarray:
    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(img.dataobj)


def classes_of(seg: np.ndarray) -> np.ndarray:
    out = np.zeros(seg.shape, np.int64)
    for cls, ids in LABEL_IDS.items():
        out[np.isin(seg, ids)] = cls
    return out


def train(
    image: np.ndarray, labels: np.ndarray, *, steps: int, patch: tuple[int, int, int], seed: int = 0
) -> dict:
    """A few seconds of Adam on patches of (normalised image, labels), half of them centred on an organ
    voxel, with class weights against the background's majority; returns the state dict."""
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = UNet(**NET)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    weight = torch.tensor([0.2] + [1.0] * (len(CLASSES) - 1))
    x_all, y_all = torch.from_numpy(image[None].astype(np.float32)), torch.from_numpy(labels)
    organs = np.argwhere(labels > 0)
    net.train()
    for _ in range(steps):
        xs, ys = [], []
        for k in range(2):
            if k % 2 == 0 and len(organs):
                centre = organs[rng.integers(len(organs))]
                start = [
                    int(np.clip(c - p // 2, 0, max(0, n - p))) for c, n, p in zip(centre, image.shape, patch)
                ]
            else:
                start = [int(rng.integers(0, max(1, n - p + 1))) for n, p in zip(image.shape, patch)]
            sl = tuple(slice(s, s + p) for s, p in zip(start, patch))
            xs.append(x_all[(slice(None), *sl)])
            ys.append(y_all[sl])
        loss = torch.nn.functional.cross_entropy(net(torch.stack(xs)), torch.stack(ys), weight=weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def metadata(name: str, patch: list[int]) -> dict[str, Any]:
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "name": name,
        "description": "tilewise test bundle: a small 3-D U-Net briefly trained on TotalSegmentator examples",
        "authors": "tilewise tests",
        "license": "Apache-2.0",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "num_channels": 1,
                    "spatial_shape": patch,
                    "dtype": "float32",
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": len(CLASSES),
                    "spatial_shape": patch,
                    "dtype": "float32",
                    "is_patch_data": True,
                    "channel_def": {str(i): c for i, c in enumerate(CLASSES)},
                }
            },
        },
    }


def inference(preprocessing: list[dict], inferer: dict, postprocessing: list[dict]) -> dict[str, Any]:
    """The zoo's inference.json, with the given transforms and inferer."""
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "UNet", **NET, "out_channels": "@num_classes"},
        "num_classes": len(CLASSES),
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': i} for i in @datalist]",
            "transform": "@preprocessing",
        },
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": inferer,
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing},
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "$@bundle_root + '/models/model.pt'",
                "load_dict": {"model": "@network"},
            },
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "initialize": ["$setattr(torch.backends.cudnn, 'benchmark', True)"],
        "run": ["$@evaluator.run()"],
    }


def save_image(postfix: str, dtype: str) -> dict[str, Any]:
    return {
        "_target_": "SaveImaged",
        "keys": "pred",
        "output_dir": "@output_dir",
        "output_postfix": postfix,
        "output_dtype": dtype,
        "resample": False,
        "separate_folder": False,
        "print_log": False,
    }


def write_bundle(out: Path, name: str, state: dict, config: dict, patch: list[int]) -> Path:
    (out / "configs").mkdir(parents=True)
    (out / "models").mkdir()
    (out / "configs" / "metadata.json").write_text(json.dumps(metadata(name, patch), indent=2))
    (out / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    torch.save(state, out / "models" / "model.pt")
    return out
