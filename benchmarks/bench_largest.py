"""MONAI's KeepLargestConnectedComponent on the whole array against tilewise's block-wise version
(pipeline/execution/largest.py): peak memory and time, each side in its own fresh process,
alternating (issue 17).

.venv/bin/python benchmarks/bench_largest.py [--pairs 2] [--scale 4] [--block 128]

The volume is TotalSegmentator's CT labels (liver, spleen, kidneys) upsampled ``scale`` times per
axis by nearest neighbour, with 0.2 % speckle so there are components to remove. MONAI's side loads
the array (as a bundle run holds it) and runs the transform; tilewise's side reads a zarr chunked in
``block``-sized chunks and writes another. Both results are compared voxel by voxel. Peak memory is
each process's own high-water mark (VmHWM).

Measured on the shared 2-core VM while other engineers' jobs ran (times inflated and noisy; memory is
the figure), ``--pairs 2``, 128³ blocks, MONAI 1.6.1:

    scale 4: 488 x 404 x 120 (23.7 M voxels)  MONAI 16.68 s, 1017 MiB   tilewise 5.00 s, 152 MiB  identical
    scale 6: 732 x 606 x 180 (79.8 M voxels)  MONAI 39.91 s, 2216 MiB   tilewise 29.10 s, 243 MiB  identical
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
if not DATA.exists():  # a worktree one level deeper; as tests/conftest.py
    DATA = Path(os.environ.get("TILEWISE_DATA", "/work/shared/data"))
SEG = DATA / "medical/totalsegmentator/example_seg.nii.gz"
APPLIED = [1, 2, 3]


def make_volume(folder: Path, scale: int, block: int) -> None:
    import nibabel as nib
    import zarr

    seg = np.asarray(nib.load(str(SEG)).dataobj)
    labels = np.select([seg == 5, seg == 1, np.isin(seg, [2, 3])], [1, 2, 3], 0).astype(np.uint8)
    labels = labels.repeat(scale, 0).repeat(scale, 1).repeat(scale, 2)
    rng = np.random.default_rng(0)
    speckle = rng.random(labels.shape) < 0.002
    labels[speckle] = rng.integers(1, 4, int(speckle.sum())).astype(np.uint8)
    np.save(folder / "labels.npy", labels)
    z = zarr.create_array(
        store=str(folder / "labels.zarr"), shape=labels.shape, dtype="uint8", chunks=(block,) * 3
    )
    z[...] = labels


def side(name: str, folder: Path) -> dict[str, float]:
    t = time.perf_counter()
    if name == "monai":
        import torch
        from monai.transforms import KeepLargestConnectedComponent

        labels = np.load(folder / "labels.npy")
        out = KeepLargestConnectedComponent(applied_labels=APPLIED)(
            torch.from_numpy(labels[None].astype(np.int64))
        )
        np.save(folder / "monai.npy", np.asarray(out[0]).astype(np.uint8))
    else:
        import zarr

        from pipeline.execution.largest import Rule, keep_largest

        src = zarr.open_array(store=str(folder / "labels.zarr"), mode="r")
        out = zarr.create_array(
            store=str(folder / "tilewise.zarr"),
            shape=src.shape,
            dtype="uint8",
            chunks=src.chunks,
            overwrite=True,
        )
        keep_largest(src, out, Rule(tuple(APPLIED)))
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's own high-water mark (VmHWM): ``ru_maxrss`` would include the parent's at fork."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--side", choices=["monai", "tilewise"])
    parser.add_argument("--folder")
    args = parser.parse_args()
    if args.side:
        print(json.dumps(side(args.side, Path(args.folder))))
        return
    with tempfile.TemporaryDirectory(prefix="bench-largest-") as tmp:
        folder = Path(tmp)
        make_volume(folder, args.scale, args.block)
        shape = np.load(folder / "labels.npy", mmap_mode="r").shape
        runs: dict[str, list[dict[str, float]]] = {"monai": [], "tilewise": []}
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
        for pair in range(args.pairs):
            for name in ("monai", "tilewise") if pair % 2 == 0 else ("tilewise", "monai"):
                cmd = [sys.executable, __file__, "--side", name, "--folder", str(folder)]
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
        import zarr

        same = np.array_equal(
            np.load(folder / "monai.npy"), zarr.open_array(str(folder / "tilewise.zarr"))[...]
        )
        print(
            f"volume {shape} ({np.prod(shape) / 1e6:.1f} M voxels), blocks {args.block}^3, identical: {same}"
        )
        for name, rows in runs.items():
            sec = statistics.median(r["seconds"] for r in rows)
            rss = statistics.median(r["peak_rss_mb"] for r in rows)
            print(f"  {name:9s} {sec:7.2f} s  peak RSS {rss:7.0f} MiB")


if __name__ == "__main__":
    main()
