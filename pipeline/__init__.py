"""tilewise: exact, seam-free, block-wise segmentation of huge rasters and volumes."""

from pipeline.api import infer_array, infer_labels
from pipeline.errors import TilewiseError

__all__ = ["TilewiseError", "infer_array", "infer_labels"]
__version__ = "0.1.0"
