"""Helpers shared by the benchmark scripts: real-content scenes of any size, bundles, peak RSS."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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


def child_usage(cmd: list[str], **kwargs: object) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Run ``cmd``; return its peak RSS (MB), its CPU seconds (user + system) and its output.

    Both come from ``wait4`` on this one command, so they count it and the processes it waited for (its
    Dask workers, say) and nothing else. ``RUSAGE_CHILDREN``'s ``ru_maxrss`` is the largest of every child
    so far: in an alternating comparison the larger side's peak would be reported for both.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, **kwargs)  # type: ignore[call-overload]
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"command failed: {' '.join(cmd)}")
    return usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, done


def child_peak_rss_mb(cmd: list[str], **kwargs: object) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run ``cmd`` and return its own peak RSS (MB, :func:`child_usage`) and its output."""
    peak, _, done = child_usage(cmd, **kwargs)
    return peak, done


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
