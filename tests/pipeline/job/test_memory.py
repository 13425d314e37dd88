"""What a block's sums hold (pipeline/job/memory.py): nnU-Net's float16 sums of each fold and every
window's share of the seams, counted exactly; the plan of an nnU-Net ensemble on the committed nnU-Net
model folder and a real CT case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flows.cli.app import app
from pipeline.core.blending import HalfAccumulator
from pipeline.core.tiling import BlockPlan, default_block_size
from pipeline.job.memory import Sums
from tests.models.bundle.nnunet.cases import write_unseen
from tests.models.bundle.nnunet.conftest import MODEL_3D


@pytest.mark.parametrize("folds", [1, 2])
def test_nnunet_sums_are_what_the_half_accumulator_holds(folds):
    """The most any block's ``HalfAccumulator`` holds (its float16 sums and each window's float32 share
    of the spill), filled window by window, and the most a seam merge reads at once, are within the
    estimate, which counts each share's weight plane as well (the accumulator recomputes it): an upper
    bound, by at most that one plane in ``K * folds``; two folds hold more than one."""
    spatial, roi, block, classes = (150, 120, 56), (48, 48, 16), (64, 64, 32), 6
    plan = BlockPlan.build(spatial, roi, 0.5, block, "nnunet")
    weights = torch.ones(roi)
    prediction = np.ones((classes * folds, *roi), np.float32)
    held, pieces = 0, {}
    for b in plan.blocks():
        spill = [s for s in (box.intersect(plan.scene) for box in b.spill) if not s.empty]
        acc = HalfAccumulator(b.read, classes * folds, weights, spill, (2, 1, 0))
        for index in plan.block_windows(b):
            acc.add(plan.window(index), prediction)
        held = max(held, acc.nbytes)
        pieces[b.index] = sum(p[1].nbytes for p in acc.pieces)
    # a seam merge reads the pieces of the block and its lower neighbours at once
    merged = max(sum(pieces[c] for c in plan.contributors(i)) for i in pieces)
    estimate = Sums(classes, folds, True).block_bytes(spatial, roi, 0.5, block, "nnunet")
    planes = classes * folds  # each share holds these float32 planes; the estimate counts one more
    assert held <= estimate[0] <= held * (planes + 1) / planes
    assert merged <= estimate[1] <= merged * (planes + 1) / planes and merged > max(pieces.values())
    if folds == 2:
        assert estimate[0] > Sums(classes, 1, True).block_bytes(spatial, roi, 0.5, block, "nnunet")[0]
    # the default block keeps them within the budget; past it, the least a block can hold
    sums = Sums(classes, folds, True)

    def measure(b: tuple[int, ...]) -> float:
        return sums.block_bytes((256, 256, 128), roi, 0.5, b, "nnunet")[0]

    fits = default_block_size((256, 256, 128), roi, classes, 64 * 2**20, block_bytes=measure)
    assert measure(fits) <= 64 * 2**20
    whole = default_block_size((256, 256, 128), roi, classes, 2**40, block_bytes=measure)
    assert whole == (256, 256, 128) and measure(whole) > 64 * 2**20  # one block: no shares handed on


def _peak(output: str) -> int:
    line = next(ln for ln in output.splitlines() if "ts_b" in ln)
    cells = [c.strip() for c in line.replace("┃", "│").strip().strip("│").split("│")]
    return int(cells[6])  # peak MB/worker


def test_plan_of_an_nnunet_ensemble_counts_the_second_folds_sums(data, tmp_path, monkeypatch):
    """``tilewise plan --folds 0,1`` adds the second fold's float16 sums and window shares (and outputs
    per window) to the one-fold plan.

    A run's measured peak is not asserted here: with these 48x48x16 blocks and two folds it measured
    567-632 MB on a quiet machine against its own 657 MB estimate, but 758 MB once under load (threads
    running late hold more), so a test cannot hold it."""
    cases = tmp_path / "cases"
    cases.mkdir()
    for f in write_unseen(data, cases):
        if not f.name.startswith("ts_b"):
            f.unlink()
    monkeypatch.setenv("TILEWISE_BASELINE_MB", "300")  # the modules' share, fixed: only the model differs
    runner = CliRunner(env={"COLUMNS": "250"})
    peaks = {}
    for folds in ("0", "0,1"):
        args = ["plan", str(cases), "-m", str(MODEL_3D), "--folds", folds, "--block-size", "48,48,16"]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        peaks[folds] = _peak(res.output)
    spatial, roi, block = (102, 95, 28), (48, 48, 16), (48, 48, 16)
    one, two = (sum(Sums(6, f, True).block_bytes(spatial, roi, 0.5, block, "nnunet")) for f in (1, 2))
    assert peaks["0,1"] - peaks["0"] >= (two - one) / 2**20 - 1, peaks  # ~39 MB more


def test_the_plan_counts_the_slabs_the_label_sink_finishes():
    """The plan counts float16 sums' float32 scores one ``LabelSink`` slab at a time, as they are made."""
    from pipeline.core import sinks
    from pipeline.job import memory

    assert memory.HALF_SLAB_PIXELS == sinks.HALF_SLAB_PIXELS
