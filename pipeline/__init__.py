"""tilewise: exact, seam-free, block-wise segmentation of huge rasters and volumes."""

from pipeline.errors import TilewiseError

__all__ = ["TilewiseError"]
__version__ = "0.1.0"
