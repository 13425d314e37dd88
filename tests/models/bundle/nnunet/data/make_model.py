"""Remake the small nnU-Net v2 model folder the tests compare against, with nnU-Net's own commands.

    PYTHONPATH=$PWD .venv/bin/python tests/models/bundle/nnunet/data/make_model.py

Steps: training cases cut from the real TotalSegmentator CT (``cases.py``); ``nnUNetv2_extract_fingerprint``
and ``nnUNetv2_plan_experiment`` (nnU-Net's planner); the plans are then shrunk on purpose (few features
per stage, a small patch) so training runs on a CPU in minutes, and saved as ``nnUNetSmallPlans``;
``nnUNetv2_preprocess``; then nnU-Net's own ``nnUNetTrainer`` trains 3d_fullres folds 0 and 1 and 2d
fold 0, with fewer epochs and iterations than its default and only its spatial and mirroring
augmentations (its intensity augmentations cost most of a CPU iteration); long enough that labels have
structure (a random net's near-ties would make comparisons meaningless). Only dataset.json, plans.json and the
checkpoints are kept (``results/``, ~1 MB). Training is not bit-reproducible; the tests compare
tilewise with nnUNetPredictor on whatever folder is here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[4]
sys.path.insert(0, str(ROOT))
DATASET = "Dataset900_TinyCT"
PLANS = "nnUNetSmallPlans"
ITERATIONS = 30
TRAIN = [("3d_fullres", 0, 25), ("3d_fullres", 1, 25), ("2d", 0, 25)]  # configuration, fold, epochs
SMALL = {
    "3d_fullres": dict(
        patch=[16, 48, 48], features=[4, 8, 16, 32], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    ),
    "2d": dict(patch=[64, 64], features=[4, 8, 16, 32], strides=[[1, 1], [2, 2], [2, 2], [2, 2]]),
}


def _shrink(cfg: dict, small: dict) -> None:
    cfg["patch_size"] = small["patch"]
    cfg["batch_size"] = 2
    a = cfg["architecture"]["arch_kwargs"]
    n = len(small["features"])
    a["n_stages"] = n
    a["features_per_stage"] = small["features"]
    a["strides"] = small["strides"]
    a["kernel_sizes"] = [[3] * len(small["patch"])] * n
    a["n_conv_per_stage"] = [2] * n
    a["n_conv_per_stage_decoder"] = [2] * (n - 1)


def main() -> None:
    from tests.conftest import DATA
    from tests.models.bundle.nnunet.cases import LABELS, write_training

    work = Path(tempfile.mkdtemp(prefix="nnunet-make-"))
    env = dict(
        os.environ,
        nnUNet_raw=str(work / "raw"),
        nnUNet_preprocessed=str(work / "pre"),
        nnUNet_results=str(work / "results"),
        nnUNet_compile="false",
    )
    os.environ.update(env)
    raw = work / "raw" / DATASET
    names = write_training(DATA, raw)
    (raw / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "CT"},
                "labels": LABELS,
                "numTraining": len(names),
                "file_ending": ".nii.gz",
            },
            indent=1,
        )
    )
    bin_ = Path(sys.executable).parent
    run = lambda *a: subprocess.run([str(bin_ / a[0]), *a[1:]], check=True, env=env)  # noqa: E731
    run("nnUNetv2_extract_fingerprint", "-d", "900", "-np", "1", "--verify_dataset_integrity")
    run("nnUNetv2_plan_experiment", "-d", "900")
    pre = work / "pre" / DATASET
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["plans_name"] = PLANS
    for name in list(plans["configurations"]):
        if name in SMALL:
            _shrink(plans["configurations"][name], SMALL[name])
        else:
            del plans["configurations"][name]
    (pre / f"{PLANS}.json").write_text(json.dumps(plans, indent=1))
    run("nnUNetv2_preprocess", "-d", "900", "-plans_name", PLANS, "-c", "3d_fullres", "2d", "-np", "1", "1")

    os.environ["nnUNet_n_proc_DA"] = "0"  # noqa: SIM112  (nnU-Net's name) augment in this process
    import torch
    from batchgeneratorsv2.transforms.utils.random import RandomTransform
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    full = nnUNetTrainer.get_training_transforms

    def light(*args, **kwargs):  # the same pipeline without its RandomTransform-wrapped intensity steps
        composed = full(*args, **kwargs)
        composed.transforms = [t for t in composed.transforms if not isinstance(t, RandomTransform)]
        return composed

    nnUNetTrainer.get_training_transforms = staticmethod(light)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a shared 2-core machine: one thread never waits at a barrier
    for cfg, fold, epochs in TRAIN:
        trainer = get_trainer_from_args("900", cfg, fold, "nnUNetTrainer", PLANS, device=torch.device("cpu"))
        trainer.num_epochs, trainer.num_iterations_per_epoch = epochs, ITERATIONS
        trainer.num_val_iterations_per_epoch = 1
        trainer.run_training()
    out = HERE / "results" / DATASET
    shutil.rmtree(out, ignore_errors=True)
    for cfg in {c for c, _, _ in TRAIN}:
        src = work / "results" / DATASET / f"nnUNetTrainer__{PLANS}__{cfg}"
        dst = out / src.name
        dst.mkdir(parents=True)
        for f in ("dataset.json", "plans.json"):
            shutil.copy(src / f, dst / f)
        for fold_dir in sorted(src.glob("fold_*")):
            (dst / fold_dir.name).mkdir()
            for ck in ("checkpoint_final.pth", "checkpoint_best.pth"):
                if (fold_dir / ck).is_file():
                    shutil.copy(fold_dir / ck, dst / fold_dir.name / ck)
    shutil.rmtree(work)
    print("model folder:", out)


if __name__ == "__main__":
    main()
