"""nnU-Net's own predictions, made here by ``nnUNetPredictor`` on the CPU: the peer tilewise is held to.

Run in this process, one case after another (``predict_from_files_sequential``), and returned in
memory in the NIfTI voxel order (x, y, z) that tilewise writes; SimpleITK's arrays are (z, y, x).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def nnunet_predict(
    model: Path,
    cases: Sequence[Sequence[Path]],
    *,
    folds: Sequence[int | str] = (0,),
    checkpoint: str = "checkpoint_final.pth",
    mirroring: bool = True,
    step: float = 0.5,
    probabilities: bool = False,
    float32_sums: bool = False,
) -> list[np.ndarray] | list[tuple[np.ndarray, np.ndarray]]:
    """Labels (x, y, z) per case, or (labels, probabilities (K, x, y, z)) with ``probabilities``.

    ``float32_sums``: nnU-Net as it is, except that its sliding-window and fold sums are float32
    instead of float16 (its buffers name ``torch.half``; its module sees float32 there for the call).
    The one difference between the two predictors that tilewise keeps on purpose, isolated: with it, any
    remaining disagreement is a real one."""
    import torch

    if float32_sums:
        import nnunetv2.inference.predict_from_raw_data as module

        class Float32Half:  # torch, but with torch.half meaning float32 (torch itself is left alone)
            def __getattr__(self, name: str) -> object:
                return torch.float32 if name == "half" else getattr(torch, name)

        module.torch = Float32Half()  # type: ignore[assignment]
        try:
            return nnunet_predict(model, cases, folds=folds, checkpoint=checkpoint, mirroring=mirroring,
                                  step=step, probabilities=probabilities)  # fmt: skip
        finally:
            module.torch = torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=step,
        use_gaussian=True,
        use_mirroring=mirroring,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(
        str(model), use_folds=tuple(folds), checkpoint_name=checkpoint
    )
    out = predictor.predict_from_files_sequential(
        [[str(f) for f in case] for case in cases], None, save_probabilities=probabilities, overwrite=True
    )
    if not probabilities:
        return [np.ascontiguousarray(seg.transpose(2, 1, 0)) for seg in out]
    return [
        (np.ascontiguousarray(seg.transpose(2, 1, 0)), np.ascontiguousarray(p.transpose(0, 3, 2, 1)))
        for seg, p in out
    ]
