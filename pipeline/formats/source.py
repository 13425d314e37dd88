"""The scene source: which reader opens a scene, as a small picklable recipe any worker can open.

Workers open their own scene from a ``SceneSource`` instead of receiving pixels through the scheduler.
Readers are imported on first use, so listing and planning scenes never loads GDAL or nibabel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.errors import FormatError
from pipeline.formats.kinds import GEOTIFF, NIFTI, STAC, ZARR, kind_of

__all__ = ["SceneSource", "kind_of", "open_source"]


@dataclass(frozen=True)
class SceneSource:
    """How to open a scene on any worker."""

    kind: str  # one of pipeline.formats.kinds.KINDS
    uris: tuple[str, ...]
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def uri(self) -> str:
        return self.uris[0]

    def open(self) -> Any:
        return open_source(self)


def open_source(source: SceneSource) -> Any:
    """The scene ``source`` names, resampled to its ``target_gsd`` option where a raster needs it."""
    options = dict(source.options)
    if source.kind == GEOTIFF:
        from pipeline.formats.geotiff import open_geotiff
        from pipeline.formats.resample import ResampledGeoScene, needs_resampling

        target = options.pop("target_gsd", None)
        scene = open_geotiff(source.uri, **options)
        if needs_resampling(scene.meta.gsd, target):
            return ResampledGeoScene(scene, target)
        return scene
    if source.kind == NIFTI:
        from pipeline.formats.nifti_reader import open_nifti

        uris = list(source.uris) if len(source.uris) > 1 else source.uri
        return open_nifti(uris, **options)
    if source.kind == STAC:
        from pipeline.formats.stac_reader import open_stac

        return open_stac(
            source.uri,
            channels=options.get("channels", ()),
            bands=dict(options.get("bands", ())),
            target_gsd=options.get("target_gsd"),
        )
    if source.kind == ZARR:
        from pipeline.formats.zarr_reader import open_zarr

        return open_zarr(source.uri, **options)
    raise FormatError(f"no reader for scene kind {source.kind!r}", path=source.uri)
