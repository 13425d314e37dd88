"""tilewise: exact, seam-free, block-wise segmentation of huge rasters and volumes.

Importing the package is light: torch and the engine load on first use of ``infer_array``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.errors import TilewiseError

if TYPE_CHECKING:
    from pipeline.engine.arrays import infer_array, infer_labels

__all__ = ["TilewiseError", "infer_array", "infer_labels"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("infer_array", "infer_labels"):
        from pipeline.engine import arrays

        return getattr(arrays, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
