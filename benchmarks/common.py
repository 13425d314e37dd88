"""Helpers shared by the benchmark scripts: real-content scenes of any size, bundles, peak RSS."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
if not DATA.exists():  # a worktree sits one level deeper than the clone; tests/conftest.py does the same
    DATA = Path(os.environ.get("TILEWISE_DATA", "/work/shared/data"))
RGB = DATA / "geo" / "rasterio" / "RGB.byte.tif"


def make_scene(path: Path, edge: int, source: Path = RGB) -> Path:
    """An ``edge``² tiled GeoTIFF whose pixels are the real Landsat scene, resampled and mirrored so the
    content stays natural at any size. Written strip by strip (memory stays small)."""
    if path.exists():
        return path
    with rasterio.open(source) as src:
        base = src.read(out_shape=(src.count, 1024, 1024), resampling=Resampling.bilinear)
        profile = src.profile
    tile = np.concatenate([base, base[:, :, ::-1]], axis=2)
    tile = np.concatenate([tile, tile[:, ::-1, :]], axis=1)  # 2048² mirrored: seamless when repeated
    profile.update(
        width=edge,
        height=edge,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        BIGTIFF="IF_SAFER",
        transform=profile["transform"],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, edge, 512):
            h = min(512, edge - row)
            r0 = row % 2048
            strip = np.take(tile, np.arange(r0, r0 + h) % 2048, axis=1)
            strip = np.take(strip, np.arange(edge) % 2048, axis=2)
            dst.write(strip, window=Window(0, row, edge, h))
    return path


def make_bundle(path: Path, channels: int, features: list[int], patch: int = 256) -> Path:
    from models.bundle import init_bundle

    if not (path / "model.yaml").exists():
        init_bundle(
            path,
            arch="unet",
            spatial_dims=2,
            in_channels=channels,
            classes=["a", "b"],
            patch_size=patch,
            features=features,
        )
    return path


def children_cpu_s() -> float:
    """User + system CPU seconds of every child process waited for so far (their own children
    included once reaped): the difference around a command is what it used, Dask workers and all."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def child_peak_rss_mb(cmd: list[str], **kwargs: object) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run ``cmd`` and return the peak RSS of the largest child process since this one started (MB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return max(after, before) / 1024, done


def make_conv1x1_bundle(path: Path) -> Path:
    """The issue-18 benchmark model: a TorchScript 1x1 convolution, 3 -> 4 classes, patch 256, overlap
    0.25, so the model costs almost nothing and everything around it shows."""
    import torch
    import yaml

    if (path / "model.yaml").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 4, 1).eval()
    torch.jit.trace(net, torch.zeros(1, 3, 8, 8)).save(str(path / "model.ts"))
    config = {
        "format_version": 1,
        "name": "conv1x1",
        "architecture": {"name": "torchscript", "path": "model.ts", "in_channels": 3, "out_channels": 4},
        "spatial_dims": 2,
        "inputs": {
            "channels": ["r", "g", "b"],
            "normalization": {"kind": "scale", "factor": 1 / 255.0, "offset": 0.0},
        },
        "patch_size": [256, 256],
        "overlap": 0.25,
        "output_activation": "softmax",
        "classes": [
            {"name": n, "color": c}
            for n, c in zip("abcd", ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"), strict=True)
        ],
    }
    (path / "model.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return path
