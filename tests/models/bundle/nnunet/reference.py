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
) -> list[np.ndarray] | list[tuple[np.ndarray, np.ndarray]]:
    """Labels (x, y, z) per case, or (labels, probabilities (K, x, y, z)) with ``probabilities``."""
    import torch
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
