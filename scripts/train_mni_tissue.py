"""Retrain the ``mni-tissue`` demo bundle (3-D U-Net: background, grey matter, white matter).

Data (``../shared/data``, see its MANIFEST): the ICBM152 2009a symmetric T1 template (skull-stripped,
uint8, 1 mm) and its GM/WM probability maps (uint8 = p * 255) from the nilearn wheel. The label volume
is argmax(1 - gm - wm, gm, wm); it is built here into a work folder (never committed). An axial slab
(z = 90..119, 30 slices through the ventricles and the thick of the white matter) is held out; the
best epoch on it is kept, then ``tilewise evaluate`` (the tiled pipeline) scores the bundle there and
the result goes into the model card. The same run from the CLI, after building the labels::

    tilewise train --images T1.nii.gz --labels tissue_labels.nii.gz --classes background,GM,WM \\
        --val-region 'z=90:120' --features 8,16,32 --patch-size 64 --flip-axes 0 --batch-size 2 \\
        --channels T1 --epochs 12 --steps-per-epoch 40 --lr 3e-3 --no-rot90 --time-limit 1080 \\
        --out bundles/mni-tissue

Run ``nice -n 10 .venv/bin/python scripts/train_mni_tissue.py``. The learning rate anneals over the
steps or a 1080 s budget, whichever ends first (``--time-limit``), so the run stays under 20 minutes
on a busy 2-core machine and still finishes its schedule.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.training import TrainConfig, labels_from_probability_maps, train, update_card  # noqa: E402
from pipeline.job.evaluate import evaluate_bundle  # noqa: E402

NILEARN = "medical/nilearn"
T1 = f"{NILEARN}/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
GM = f"{NILEARN}/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
WM = f"{NILEARN}/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
LABELS_NAME = "mni_icbm152_tissue_labels.nii.gz"
VAL_REGION = "z=90:120"  # axial slab, RAS voxel indices (z = 18..47 mm)
MNI_NOTICE = (
    "MNI ICBM152 2009a template: Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, "
    "Montreal Neurological Institute, McGill University. Permission to use, copy, modify, and distribute "
    "this software and its documentation for any purpose and without fee is hereby granted, provided "
    "that the above copyright notice appear in all copies. The authors and McGill University make no "
    "representations about the suitability of this software for any purpose. It is provided 'as is' "
    "without express or implied warranty."
)
DATA_SOURCES = [
    "MNI ICBM152 2009a symmetric T1 template (mni_icbm152_t1_tal_nlin_sym_09a, skull-stripped, uint8, 1 mm) "
    "as shipped in the nilearn 0.14.1 wheel (nilearn/datasets/data)",
    "Labels: argmax(1 - gm - wm, gm, wm) of the template's GM and WM probability maps (same wheel)",
]
LICENSES = [MNI_NOTICE, "nilearn 0.14.1: BSD-3-Clause", "Model weights: Apache-2.0 (this project)"]


def data_dir() -> Path:
    """``$TILEWISE_DATA`` or ``../shared/data``, relative to the repository when it can be (the card
    records the paths, and they should not name this machine)."""
    env = os.environ.get("TILEWISE_DATA")
    path = Path(env) if env else ROOT.parent / "shared" / "data"
    try:
        return Path(os.path.relpath(path.resolve(), ROOT))
    except ValueError:  # another drive (Windows)
        return path.resolve()


def build_labels(data: Path, out_dir: Path) -> Path:
    """The 3-class label volume on the T1 grid (same affine and qform/sform codes)."""
    return labels_from_probability_maps([data / GM, data / WM], out_dir / LABELS_NAME)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="default: bundles/mni-tissue")
    ap.add_argument("--work", default=None, help="folder for the label volume (default: a temp folder)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--steps-per-epoch", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=1080.0, help="seconds (LR anneals to it)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    args.out = str(Path(args.out).resolve()) if args.out else "bundles/mni-tissue"
    os.chdir(ROOT)  # paths in the card are relative to the repository
    data = data_dir()
    command = shlex.join(
        ["python", "scripts/train_mni_tissue.py", *(argv if argv is not None else sys.argv[1:])]
    )
    with tempfile.TemporaryDirectory(prefix="tilewise-mni-") as tmp:
        labels = build_labels(data, Path(args.work or tmp))
        cfg = TrainConfig(
            images=[str(data / T1)],
            labels=[str(labels)],
            out=args.out,
            classes=["background", "GM", "WM"],
            colors=["#000000", "#e6a532", "#f0f0dc"],
            arch="unet",
            features=[8, 16, 32],
            channels=["T1"],
            ignore_value=None,
            val_region=VAL_REGION,
            patch_size=[args.patch_size],
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            flip_axes=[0],
            rot90=False,
            time_limit_s=args.time_limit,
            name="mni-tissue",
            description=(
                "Brain tissue segmentation (background, grey matter, white matter) of skull-stripped T1 "
                "MRI in MNI space at 1 mm. Small 3-D U-Net trained on the ICBM152 2009a template only: "
                "a demo, it has never seen a real subject's scan."
            ),
            data_sources=DATA_SOURCES,
            licenses=LICENSES,
            command=command,
            overwrite=True,
            progress=not args.quiet,
        )
        result = train(cfg)
        print(
            f"trained in {result.seconds:.0f} s; best epoch {result.best['epoch']}: "
            + ", ".join(f"{k} {v['dice']:.4f}" for k, v in result.best["per_class"].items())
        )
        scores = evaluate_bundle(args.out, [str(data / T1)], [str(labels)], "val", ignore_value=None)
    evaluate_cmd = shlex.join(
        [
            "tilewise",
            "evaluate",
            "bundles/mni-tissue",
            "--images",
            f"../shared/data/{T1}",
            "--labels",
            LABELS_NAME,
            "--region",
            "val",
        ]
    )
    built = f"argmax(1 - gm - wm, gm, wm) of {data / GM} and {data / WM} (scripts/train_mni_tissue.py)"
    update_card(
        args.out,
        {
            "training": {"labels": [built]},
            "metrics": {
                "pipeline_evaluate": {
                    "region": scores["region"],
                    "dice": {k: round(v["dice"], 4) for k, v in scores["per_class"].items()},
                    "iou": {k: round(v["iou"], 4) for k, v in scores["per_class"].items()},
                    "command": evaluate_cmd
                    + f"  # {LABELS_NAME} from scripts/train_mni_tissue.py build_labels()",
                }
            },
        },
    )
    for name, v in scores["per_class"].items():
        print(f"tiled pipeline, held-out {scores['region']}: {name} dice {v['dice']:.4f} iou {v['iou']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
