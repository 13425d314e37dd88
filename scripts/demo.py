"""``make demo``: the main job on the bundled samples with both demo bundles, then where to look.

Runs ``tilewise run`` as a user would (a subprocess of the venv's ``tilewise``), so the demo exercises
the real entry point: the S2 sample with ``s2-water`` into a COG (+ GeoPackage polygons), and the MNI
T1 with ``mni-tissue`` into a NIfTI and into OME-Zarr. Each run writes a JSON report and a quicklook
PNG. It exits non-zero if any run fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "demo-output"
RUNS = [  # (name, input folder, bundle, extra flags)
    ("s2-water", "samples/s2", "bundles/s2-water", ["--polygons"]),
    ("mni-tissue", "samples/mni", "bundles/mni-tissue", []),
    ("mni-tissue-zarr", "samples/mni", "bundles/mni-tissue", ["--format", "zarr"]),
]
HOW_TO_OPEN = {
    "s2-water": [
        "QGIS: drag the *_labels.tif (a COG with palette and class names) onto the sample GeoTIFF; "
        "*_polygons.gpkg holds the water/land polygons.",
    ],
    "mni-tissue": [
        "ITK-SNAP: File > Open Main Image = samples/mni/…T1…nii.gz, Segmentation > Open Segmentation = "
        "*_labels.nii.gz, Segmentation > Import Label Descriptions = *_labels_itksnap.txt.",
        "3D Slicer: load *_labels.nii.gz as a Segmentation (or a labelmap with the *.ctbl colour table).",
    ],
    "mni-tissue-zarr": [
        "napari: `napari --plugin napari-ome-zarr demo-output/mni-tissue-zarr/*_labels.zarr` "
        "(OME-Zarr labels with colours and multiscales).",
    ],
}


def tilewise() -> list[str]:
    """The venv's console script when installed, else ``python -m pipeline``."""
    exe = Path(sys.executable).with_name("tilewise")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "flows.cli"]


def summarise(name: str, folder: Path) -> None:
    print(f"\n== {name}: {folder.relative_to(ROOT)}/")
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        size = (
            sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            if path.is_dir()
            else path.stat().st_size
        )
        print(f"   {path.name:<60} {size / 1024:>9.0f} KiB")
    for report in sorted(folder.glob("*_report.json")):
        data = json.loads(report.read_text())
        parts = []
        for row in data.get("classes", []):
            amount = next(
                (f"{row[k]:g} {u}" for k, u in (("area_ha", "ha"), ("volume_ml", "mL")) if k in row), ""
            )
            parts.append(f"{row['name']} {amount or row['pixels']}")
        print(f"   classes: {', '.join(parts)}")
        print(f"   timings: {data.get('timings_s')}")
    for line in HOW_TO_OPEN.get(name, []):
        print(f"   open with {line}")


def main() -> int:
    os.chdir(ROOT)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    missing = [p for _, src, bundle, _ in RUNS for p in (src, bundle) if not (ROOT / p).exists()]
    if missing:
        print(f"demo: missing {missing}; run from a complete clone", file=sys.stderr)
        return 2
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    t_all = time.perf_counter()
    failed = []
    for name, src, bundle, extra in RUNS:
        args = ["run", src, str(OUT.relative_to(ROOT) / name), "--model", bundle, *extra]
        print(f"\n$ tilewise {' '.join(args)}", flush=True)
        t = time.perf_counter()
        rc = subprocess.call([*tilewise(), *args], cwd=ROOT)
        print(f"   ({time.perf_counter() - t:.1f} s, exit {rc})", flush=True)
        if rc != 0:
            failed.append(name)
    print("\n" + "=" * 100)
    print(
        f"tilewise demo: {len(RUNS) - len(failed)}/{len(RUNS)} runs ok in {time.perf_counter() - t_all:.0f} s"
    )
    for name, _, _, _ in RUNS:
        if (OUT / name).is_dir():
            summarise(name, OUT / name)
    print("\nQuicklooks (PNG) sit next to each output; reports (JSON) list the model, plan, timings and")
    print("class areas/volumes. Sample data notices: samples/NOTICE.md. Model cards: `tilewise bundle info")
    print("bundles/s2-water` and `tilewise bundle info bundles/mni-tissue`.")
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
