"""infer_array / infer_labels against MONAI's sliding_window_inference, on random 2-D and 3-D input."""

import numpy as np
import pytest
import torch
import zarr
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from pipeline import infer_array, infer_labels
from pipeline.engine.predictor import Predictor
from tests.model_wrappers import Counting

CASES = [
    # dims, image shape (C, *spatial), roi, block sizes that cut the grid unevenly
    (2, (3, 173, 131), (48, 40), [None, (48, 40), (61, 77), (100, 53), (173, 131)]),
    (2, (1, 30, 210), (48, 32), [None, (48, 32), (50, 71)]),  # axis shorter than the window: padded
    (3, (2, 45, 38, 52), (24, 16, 20), [None, (24, 16, 20), (31, 17, 29), (45, 38, 52)]),
]


def _net(dims: int, channels: int, classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(1)
    return UNet(dims, channels, classes, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()


def _monai(x: np.ndarray, net, roi, overlap, mode, sigma_scale=0.125) -> np.ndarray:
    with torch.no_grad():
        ref = sliding_window_inference(
            torch.from_numpy(x)[None], roi, 4, net, overlap=overlap, mode=mode, sigma_scale=sigma_scale
        )
    return ref.numpy()[0]


@pytest.mark.parametrize(("dims", "shape", "roi", "blocks"), CASES)
@pytest.mark.parametrize(("mode", "overlap"), [("gaussian", 0.25), ("constant", 0.5), ("gaussian", 0.6)])
def test_equals_monai_for_any_block_size(dims, shape, roi, blocks, mode, overlap):
    rng = np.random.default_rng(dims)
    x = rng.normal(size=shape).astype(np.float32)
    net = _net(dims, shape[0])
    ref = _monai(x, net, roi, overlap, mode)
    for block in blocks:
        counting = Counting(net)
        out = infer_array(x, counting, patch_size=roi, overlap=overlap, blend=mode, block_size=block)
        assert out.shape == ref.shape and out.dtype == np.float32
        assert np.abs(out - ref).max() < 1e-4, block
        labels = infer_labels(x, net, patch_size=roi, overlap=overlap, blend=mode, block_size=block)
        assert (labels == ref.argmax(0)).all(), block
        grid = 1
        for n, r in zip(shape[1:], roi, strict=True):
            from pipeline.core.tiling import axis_starts

            grid *= len(axis_starts(n, r, overlap))
        assert counting.windows <= 1.01 * grid, (counting.windows, grid)


def test_sigma_scale_and_batch_size_pass_through():
    x = np.random.default_rng(0).normal(size=(1, 90, 70)).astype(np.float32)
    net = _net(2, 1)
    ref = _monai(x, net, (32, 32), 0.25, "gaussian", sigma_scale=0.3)
    out = infer_array(x, net, patch_size=32, sigma_scale=0.3, batch_size=7, block_size=(40, 33))
    assert np.abs(out - ref).max() < 1e-4


def test_labels_write_into_zarr_from_zarr(tmp_path):
    x = np.random.default_rng(2).normal(size=(2, 130, 120)).astype(np.float32)
    src = zarr.create_array(
        store=str(tmp_path / "in.zarr"), shape=x.shape, dtype="float32", chunks=(2, 64, 64)
    )
    src[:] = x
    dst = zarr.create_array(
        store=str(tmp_path / "out.zarr"), shape=x.shape[1:], dtype="uint8", chunks=(64, 64)
    )
    net = _net(2, 2)
    infer_labels(src, net, patch_size=32, block_size=64, out=dst)
    assert (dst[:] == infer_array(x, net, patch_size=32).argmax(0)).all()


def test_nodata_windows_are_skipped_and_labelled_nodata():
    x = np.random.default_rng(3).normal(size=(1, 128, 128)).astype(np.float32)
    mask = np.zeros((128, 128), bool)
    mask[:, :64] = True  # left half is nodata: windows wholly inside it are never run
    counting = Counting(_net(2, 1))
    labels = infer_labels(x, counting, patch_size=32, overlap=0.0, block_size=64, mask=mask, nodata_label=255)
    assert counting.windows == 8  # 4x4 grid, only the right two columns run
    assert (labels[:, :64] == 255).all()
    assert (labels[:, 64:] < 3).all()
    scores = infer_array(x, counting, patch_size=32, overlap=0.0, mask=mask)
    assert np.isnan(scores[:, :, :64]).all() and np.isfinite(scores[:, :, 64:]).all()


@pytest.mark.parametrize("mode", ["cosine", "crop"])
def test_other_blends_are_block_invariant_and_close_to_centre_window(mode):
    x = np.random.default_rng(4).normal(size=(1, 150, 150)).astype(np.float32)
    net = _net(2, 1)
    whole = infer_array(x, net, patch_size=48, blend=mode)
    for block in [(48, 48), (70, 101)]:
        assert np.abs(infer_array(x, net, patch_size=48, blend=mode, block_size=block) - whole).max() < 1e-5
    assert np.isfinite(whole).all()


def test_tta_and_activation():
    x = np.random.default_rng(5).normal(size=(1, 64, 64)).astype(np.float32)
    net = _net(2, 1)
    probs = infer_array(x, net, patch_size=32, overlap=0.0, activation="softmax", tta=True)
    assert np.allclose(probs.sum(0), 1.0, atol=1e-5)
    flipped = infer_array(x[:, ::-1].copy(), net, patch_size=32, overlap=0.0, activation="softmax", tta=True)
    # flip averaging over all axis combinations makes the result equivariant to flips
    assert np.abs(flipped[:, ::-1] - probs).max() < 1e-4


def test_bad_arguments_are_clear():
    x = np.zeros((1, 64, 64), np.float32)
    with pytest.raises(ValueError, match="smaller than the window"):
        infer_array(x, _net(2, 1), patch_size=32, block_size=16)
    with pytest.raises(ValueError, match="overlap"):
        infer_array(x, _net(2, 1), patch_size=32, overlap=1.0)
    with pytest.raises(ValueError, match="patch_size"):
        infer_array(x, _net(2, 1), patch_size=(32, 32, 32))


def test_seam_spill_to_disk_keeps_results_identical():
    """Past its memory budget the sweep's seam store spills to disk; the result must not change."""
    from pipeline.core.sinks import ScoreSink
    from pipeline.engine.arrays import _plan, sweep

    x = np.random.default_rng(6).normal(size=(1, 150, 170)).astype(np.float32)
    net = _net(2, 1)
    whole = infer_array(x, net, patch_size=32, block_size=(40, 50))
    plan = _plan(x.shape, 32, 0.25, (40, 50), 3)
    sink = ScoreSink(None, plan.spatial_shape)
    stats = sweep(x, Predictor(net), plan, sink, channels=3, seam_budget_bytes=0)  # spill every block
    assert stats.peak_seam_bytes == 0
    assert np.array_equal(sink.out, whole)


def _nnunet_weight(spatial, roi) -> np.ndarray:
    """Sum of nnU-Net's gaussian over the windows covering each voxel (float64)."""
    import itertools

    from pipeline.core.blending import importance_map
    from pipeline.core.tiling import axis_starts

    pad = [max(n, r) for n, r in zip(spatial, roi, strict=True)]
    weight = np.zeros(pad)
    starts = [axis_starts(p, r, 0.5, "nnunet") for p, r in zip(pad, roi, strict=True)]
    for start in itertools.product(*starts):
        weight[tuple(slice(a, a + r) for a, r in zip(start, roi, strict=True))] += importance_map(
            roi, "nnunet"
        )
    lo = [(p - n) // 2 for p, n in zip(pad, spatial, strict=True)]
    return weight[tuple(slice(a, a + n) for a, n in zip(lo, spatial, strict=True))]


@pytest.mark.parametrize(
    "shape", [(1, 30, 101, 122), (1, 12, 70, 50)]
)  # the second: z shorter than the patch
def test_nnunet_grid_and_gaussian_equal_nnunet_sliding_window_for_any_block_size(shape):
    """nnUNetPredictor's own sliding window (its grid, gaussian, padding) is the peer. It sums in float16,
    so where every covering window weighs almost nothing (volume corners: products below float16's
    normal range) its values are rounding noise; elsewhere they must agree."""
    import json
    from pathlib import Path

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = Path(__file__).parents[2] / "models/bundle/nnunet/data/results/Dataset900_TinyCT"
    folder = folder / "nnUNetTrainer__nnUNetSmallPlans__3d_fullres"
    plans = PlansManager(json.loads((folder / "plans.json").read_text()))
    config = plans.get_configuration("3d_fullres")
    net = _net(3, 1, classes=6)
    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)  # fmt: skip
    dataset = json.loads((folder / "dataset.json").read_text())
    predictor.manual_initialization(net, plans, config, [net.state_dict()], dataset, "nnUNetTrainer", None)
    x = np.random.default_rng(7).normal(size=shape).astype(np.float32)
    with torch.no_grad():
        ref = predictor.predict_sliding_window_return_logits(torch.from_numpy(x)).float().numpy()
    roi = tuple(config.patch_size)
    sound = _nnunet_weight(shape[1:], roi) > 1e-3  # nnU-Net's map peaks at 10; float16 is normal above 6e-5
    assert sound.mean() > 0.8
    for block in [None, (17, 50, 61), (16, 48, 48)]:
        out = infer_array(
            x, net, patch_size=roi, overlap=0.5, grid="nnunet", blend="nnunet", block_size=block
        )
        assert np.abs(out - ref)[:, sound].max() < 1e-2, block
        assert (out.argmax(0) == ref.argmax(0))[sound].mean() > 0.999, block
