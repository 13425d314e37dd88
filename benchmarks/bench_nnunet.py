"""tilewise against nnUNetPredictor on the same case and model, each side in its own fresh process.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_nnunet.py speed MODEL_FOLDER CASE_0000.nii.gz
    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_nnunet.py memory MODEL_FOLDER --edge 512 \
        [--block EDGE] [--nnunet-timeout 3600] [--nnunet-fit 64,256] [--nnunet-only] \
        [--accumulate nnunet|float32]

``speed``: seconds per case (model load, preprocessing, sliding window, export; step 0.5, mirroring on,
fold 0) and peak RSS, sides alternated ``--repeat`` times (order matters on a shared machine).
``memory``: a real CT upsampled to ``edge``³ at the plans' spacing; peak RSS writing labels only
(no mirroring, fold 0), tilewise and then nnUNetPredictor, each in its own fresh process. nnU-Net's is
measured when ``--nnunet-timeout`` is given and it finishes within it. ``--nnunet-fit`` measures it on
smaller cases instead and extrapolates its peak linearly in voxels (``fitted``); the ratio takes the
measured peak, else the fitted one, else its buffers as counted from its code (``nnunet_buffers_mb``,
printed in any case, labelled as computed). ``--nnunet-only`` skips tilewise's side.

Measured (``speed``, ``--repeat 2``, on the shared 2-core machine while other jobs ran, so absolute
times are inflated and noisy): the test model's 3d_fullres, unseen CT case ts_a (112x93x30, written by
``tests/models/bundle/nnunet/cases.write_unseen``): nnUNetPredictor 261.7 s and 187.1 s, peak RSS
680 MB; tilewise 58.3 s and 49.6 s, peak RSS 413-418 MB; best-of ratio tilewise/nnU-Net 0.26 (float32
sums, batches of 4). With nnU-Net's float16 sums and one window per pass (the default since), ``--repeat
1`` with the machine less loaded: nnUNetPredictor 44.3 s, 633 MB; tilewise 35.2 s, 499 MB; ratio 0.80.
Again (``--repeat 2``, heavily loaded): nnUNetPredictor 102.1 s and 76.2 s, 677-679 MB; tilewise 68.8 s
and 44.2 s, 514-516 MB; best-of ratio 0.58.

Measured (``memory --edge 512``, tilewise side; test model 3d_fullres, fold 0, no mirroring, labels only,
nnU-Net's float16 sums, the default blocks: 16 slabs of 512x512x32; the shared 2-core machine under other
jobs' load): 27783 windows, 3684 s, peak RSS 1274 MB (2^20 bytes), flat: 0.8 GB on the first slab, then
1.13-1.25 GB to the end (``rss_mb_per_5pct``). nnU-Net's side (``--nnunet-only --nnunet-fit``, and
``--nnunet-timeout`` at 256): peak RSS 649 MB at 64³, 1219 MB at 256³ (1059 s, 548 MB once loaded); the
line through them gives 5278 MB at 512³, so a ratio of 0.24. At 320³ it measured 1818 MB (712 s), a
little above the line; through all three, 5457 MB (0.23). Its buffers alone compute to 3584 MB at
512³, which undercounts it (448 MB of buffers against 671 MB measured over its loaded process at 256³).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def side_nnunet(model: str, case: str, out: str, mirroring: str = "1") -> dict[str, float]:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    t = time.perf_counter()
    p = nnUNetPredictor(
        tile_step_size=0.5,
        use_mirroring=mirroring == "1",
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    p.initialize_from_trained_model_folder(model, use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    Path(out).mkdir(parents=True, exist_ok=True)  # nnU-Net writes its arguments there first
    loaded = _peak_mb()  # torch, nnunetv2 and the model: what the case's buffers come on top of
    p.predict_from_files_sequential([[case]], out, save_probabilities=False, overwrite=True)
    return {"seconds": time.perf_counter() - t, "peak_rss_mb": _peak_mb(), "loaded_rss_mb": loaded}


def side_tilewise(
    model: str,
    case: str,
    out: str,
    block: str | None = None,
    mirroring: str = "1",
    accumulate: str = "nnunet",
) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    from pipeline.job.config import JobConfig
    from pipeline.job.skeleton import run_job

    samples = _sample_rss()
    t = time.perf_counter()
    options = {"folds": [0], "mirroring": mirroring == "1", "accumulate": accumulate}
    cfg = {"input": case, "output": out, "model": model, "model_options": options,
           "execution": {"device": "cpu"}, "outputs": {"format": "nifti", "quicklook": False}}  # fmt: skip
    if block:
        cfg["tiling"] = {"block_size": [int(block)] * 3}
    (result,) = run_job(JobConfig.model_validate(cfg))
    assert result.status == "ok", result.reason
    step = max(1, len(samples) // 20)
    timeline = [round(max(samples[i : i + step])) for i in range(0, len(samples), step)]
    return {"seconds": time.perf_counter() - t, "peak_rss_mb": _peak_mb(), "rss_mb_per_5pct": timeline}


def _sample_rss() -> list[float]:
    """RSS (MB) once a second on a daemon thread, for where in the run the peak falls."""
    import threading

    samples: list[float] = []

    def sample() -> None:
        while True:
            with open("/proc/self/statm") as fh:
                samples.append(int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20)
            time.sleep(1.0)

    threading.Thread(target=sample, daemon=True).start()
    return samples


def _fresh(side: str, *args: str, timeout: float | None = None) -> dict[str, float]:
    code = f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); "
    code += f"from benchmarks.bench_nnunet import side_{side}; "
    code += f"print(json.dumps(side_{side}(*{list(args)!r})))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True, timeout=timeout
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def speed(model: str, case: str, repeat: int) -> None:
    rows = []
    for i in range(repeat):
        for side in ("nnunet", "tilewise") if i % 2 == 0 else ("tilewise", "nnunet"):
            with tempfile.TemporaryDirectory() as out:
                rows.append({"side": side, **_fresh(side, model, case, out)})
                print(json.dumps(rows[-1]), flush=True)
    best = {s: min(r["seconds"] for r in rows if r["side"] == s) for s in ("nnunet", "tilewise")}
    print(json.dumps({"best_seconds": best, "ratio_tilewise_over_nnunet": best["tilewise"] / best["nnunet"]}))


def nnunet_buffers_mb(shape: tuple[int, ...], classes: int) -> float:
    """What nnUNetPredictor's own buffers hold at once for a one-channel case of ``shape``, labels only
    and no resampling: the float32 input (alive until export), the float16 logits and weight sums, then
    at export numpy's argmax of the float16 logits (int64) and the uint8 labels (twice: cropped and
    reverted). It leaves out its process (torch, the model) and preprocessing's copies: see ``fitted``."""
    voxels = 1
    for n in shape:
        voxels *= n
    data = 4 * voxels  # preprocessed float32 input
    logits = 2 * classes * voxels + 2 * voxels  # float16 logits and gaussian weight sums
    export = 8 * voxels + 2 * voxels  # int64 argmax, uint8 labels and their uncropped copy
    return (data + logits + export) / 2**20


def fitted(peaks: dict[int, float], edge: int) -> float:
    """nnU-Net's peak RSS at ``edge``³ from peaks measured at smaller edges: a straight line in the voxel
    count through them (least squares), as its buffers all grow with the case."""
    import numpy as np

    x = np.array([float(e) ** 3 for e in peaks])
    slope, intercept = np.polyfit(x, np.array(list(peaks.values())), 1)
    return float(intercept + slope * float(edge) ** 3)


def _case(data: Path, edge: int, folder: Path) -> Path:
    """A real CT upsampled to ``edge``³ (linear), as int16, at the file's own spacing."""
    import nibabel as nib
    import numpy as np
    from scipy.ndimage import zoom

    src = nib.load(data / "medical" / "totalsegmentator" / "example_ct_sm.nii.gz")
    x = np.asanyarray(src.dataobj).astype(np.float32)
    big = zoom(x, [edge / n for n in x.shape], order=1).astype(np.int16)
    case = folder / f"big{edge}_0000.nii.gz"
    nib.save(nib.Nifti1Image(big, src.affine), case)
    return case


def memory(
    model: str,
    edge: int,
    block: int | None,
    nnunet_timeout: float | None,
    accumulate: str,
    nnunet_only: bool,
    fit_edges: list[int],
) -> None:
    data = Path(os.environ.get("TILEWISE_DATA", ROOT.parent / "shared" / "data"))  # as the tests find it
    with tempfile.TemporaryDirectory() as tmp:
        theirs: dict[str, object] = {"computed_from_buffers_mb": nnunet_buffers_mb((edge,) * 3, 6)}
        if fit_edges:  # nnU-Net measured on smaller cases, extrapolated to this one
            peaks = {}
            for e in fit_edges:
                small = _case(data, e, Path(tmp))
                run = _fresh("nnunet", model, str(small), str(Path(tmp) / f"nn{e}"), "0")
                print(json.dumps({"edge": e, "nnunet": run}), flush=True)
                peaks[e] = run["peak_rss_mb"]
                small.unlink()
            theirs["fitted_mb"] = fitted(peaks, edge)
        case = _case(data, edge, Path(tmp))
        out = str(Path(tmp) / "out")
        ours = None
        if not nnunet_only:
            ours = _fresh("tilewise", model, str(case), out, str(block or ""), "0", accumulate)
        print(json.dumps({"edge": edge, "tilewise": ours}), flush=True)
        if nnunet_timeout:
            try:
                theirs["measured"] = _fresh("nnunet", model, str(case), str(Path(tmp) / "nn"), "0",
                                            timeout=nnunet_timeout)  # fmt: skip
            except subprocess.TimeoutExpired:
                theirs["measured"] = f"did not finish within {nnunet_timeout:g} s"
        measured = theirs.get("measured")
        peak = measured["peak_rss_mb"] if isinstance(measured, dict) else theirs.get("fitted_mb")
        peak = peak or theirs["computed_from_buffers_mb"]
        ratio = None if ours is None else ours["peak_rss_mb"] / float(peak)  # type: ignore[arg-type]
    print(json.dumps({"edge": edge, "nnunet": theirs, "ratio_tilewise_over_nnunet_rss": ratio}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["speed", "memory"])
    ap.add_argument("model")
    ap.add_argument("case", nargs="?")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--edge", type=int, default=512)
    ap.add_argument("--block", type=int, default=None, help="block edge; default: the job's own sizing")
    ap.add_argument("--nnunet-timeout", type=float, default=None, help="also run nnUNetPredictor, this long")
    ap.add_argument("--accumulate", choices=["nnunet", "float32"], default="nnunet")
    ap.add_argument("--nnunet-only", action="store_true", help="memory: only nnU-Net's side")
    ap.add_argument("--nnunet-fit", default="", help="memory: edges to measure nnU-Net at, extrapolated")
    a = ap.parse_args()
    if a.mode == "speed":
        speed(a.model, a.case, a.repeat)
    else:
        fit = [int(e) for e in a.nnunet_fit.split(",") if e]
        memory(a.model, a.edge, a.block, a.nnunet_timeout, a.accumulate, a.nnunet_only, fit)
