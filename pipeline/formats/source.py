"""Which reader opens a path, and how a ``SceneSource`` (small, picklable) becomes a Scene on any worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.errors import FormatError
from pipeline.formats.geotiff import is_geotiff_like


@dataclass(frozen=True)
class SceneSource:
    """How to open a scene on any worker."""

    kind: str  # geotiff | nifti | zarr
    uris: tuple[str, ...]
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def uri(self) -> str:
        return self.uris[0]

    def open(self) -> Any:
        return open_source(self)


NIFTI_SUFFIXES = (".nii", ".nii.gz")
ZARR_SUFFIXES = (".zarr",)


def kind_of(uri: str) -> str | None:
    """The reader family for a path or URL, by its extension (None if not a scene)."""
    name = uri.rstrip("/").lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(ZARR_SUFFIXES):
        return "zarr"
    if is_geotiff_like(name):
        return "geotiff"
    return None


def open_source(source: SceneSource) -> Any:
    options = dict(source.options)
    if source.kind == "geotiff":
        from pipeline.formats.geotiff import open_geotiff
        from pipeline.formats.resample import ResampledGeoScene, needs_resampling

        target = options.pop("target_gsd", None)
        scene = open_geotiff(source.uri, **options)
        if needs_resampling(scene.meta.gsd, target):
            return ResampledGeoScene(scene, target)
        return scene
    if source.kind == "nifti":
        from pipeline.formats.nifti import open_nifti

        uris = list(source.uris) if len(source.uris) > 1 else source.uri
        return open_nifti(uris, **options)
    if source.kind == "zarr":
        from pipeline.formats.zarr import open_zarr

        return open_zarr(source.uri, **options)
    raise FormatError(f"no reader for scene kind {source.kind!r}", path=source.uri)
