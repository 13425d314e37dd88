"""The Scene protocol: what every reader gives the engine, whatever the file format.

The engine sees ``(C, *spatial)`` in its own axis order (for NIfTI: reoriented to the bundle's
orientation). Readers never load a whole large scene; ``read`` returns just the requested box,
padded with ``fill`` where the box leaves the scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pipeline.core.box import Box


@dataclass
class GeoMeta:
    """Georeferencing of a 2-D raster scene, enough to write outputs on the same grid."""

    crs: Any  # rasterio.crs.CRS or None
    transform: Any  # affine.Affine
    nodata: float | None = None
    gsd: tuple[float, float] | None = None  # pixel size (y, x) in CRS units
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class VolumeMeta:
    """Voxel grid of a medical volume as stored in the file (before any reorientation)."""

    affine: np.ndarray  # 4x4 of the file's own voxel grid
    spacing: tuple[float, ...]  # voxel size in mm along the engine's axes
    header: Any = None  # nibabel header of the source, for qform/sform codes and units
    orientation: str = "RAS"  # axis codes of the engine's view


@runtime_checkable
class Scene(Protocol):
    """A lazily read image, ``(C, *spatial)``."""

    uri: str
    shape: tuple[int, ...]
    dtype: np.dtype
    meta: GeoMeta | VolumeMeta | None

    @property
    def spatial_shape(self) -> tuple[int, ...]: ...

    def read(self, box: Box, fill: float = 0.0) -> np.ndarray:
        """Pixels of ``box`` as ``(C, *box.shape)`` in the scene dtype, ``fill`` outside the scene."""
        ...

    def read_nodata(self, box: Box) -> np.ndarray | None:
        """Boolean ``box.shape`` mask, True where there is no valid data (outside is True).

        ``None`` means the scene has no nodata concept and every pixel inside is valid.
        """
        ...

    def close(self) -> None: ...
