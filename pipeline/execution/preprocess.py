"""Turn raw scene pixels into exactly what the model was trained on: the right channels, normalised.

Format-agnostic on purpose: it only uses the Scene protocol (``uri``, ``shape``, ``read``,
``read_nodata``), so every reader gets the same behaviour. Channel counts are checked when the
preprocessor is made, before any block runs, so a wrong scene fails in one clear line instead of
producing confident garbage. Per-scene statistics (percentile normalisation) come from a sparse grid
of small windows over the whole scene: representative, bounded in memory and I/O whatever the
scene size, and identical for every block, so blocks stay seam-free. A per-scene z-score
(``scene_zscore``, MONAI's ``NormalizeIntensityd`` without fixed statistics) must equal the peer's,
so its mean and standard deviation come from one exact pass over the scene in slabs instead; so do
the minimum and maximum of ``scene_rescale`` (nnU-Net's ``RescaleTo01Normalization``), and the box of
non-zero voxels nnU-Net crops a case to (``scene_passes.nonzero_box``). These passes read the scene once each
before the block pass and keep only a few numbers, so every block normalises alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.box import Box
from pipeline.errors import InputError
from pipeline.execution.scene_passes import SAMPLE_BUDGET, sample_boxes, slabs
from pipeline.formats.scene import GeoMeta, Scene

if TYPE_CHECKING:
    from models.bundle import Normalization


@dataclass
class Preprocessor:
    """Channel selection + normalisation for one (bundle, scene) pair; cheap to pickle to workers."""

    normalization: Normalization
    channels: list[str]
    band_indexes: list[int] | None = None  # 1-based
    model_name: str = "model"
    uri: str = ""
    lower_values: np.ndarray | None = None  # percentile: per-channel scene values at lower/upper
    upper_values: np.ndarray | None = None
    scene_mean: np.ndarray | None = None  # scene_zscore: per channel (all equal unless channel_wise)
    scene_std: np.ndarray | None = None
    scene_min: np.ndarray | None = None  # scene_rescale: per channel
    scene_max: np.ndarray | None = None
    # scene_zscore with an "any" non-zero mask: the zero voxels nnU-Net's binary_fill_holes adds to
    # the mask, as (N, D) scene coordinates (few: holes enclosed by non-zero voxels)
    holes: np.ndarray | None = None
    # nnU-Net's resampling: normalise the file's voxels, then resample (the reader runs
    # :meth:`native_input` on each native region it reads) and clip cubic values to the normalised
    # case's range, ``(C, S, 2)``, per slice along the scene's separate axis when it has one
    before_resampling: bool = False
    native_range: np.ndarray | None = None

    @classmethod
    def from_bundle(
        cls, bundle_config: Any, scene: Scene, *, sample_budget: int = SAMPLE_BUDGET, stats: bool = True
    ) -> Preprocessor:
        """Check ``scene`` fits the bundle's inputs and compute any per-scene statistics.

        ``bundle_config`` is a ``BundleConfig`` (or a ``Bundle``, whose ``.config`` is used).
        ``stats=False`` only checks channels (a dry run reads no pixels).
        """
        cfg = getattr(bundle_config, "config", bundle_config)
        pre = cls(
            normalization=cfg.inputs.normalization,
            channels=list(cfg.inputs.channels),
            # a scene that picked the model's channels itself (a STAC Item) leaves nothing to select
            band_indexes=None
            if getattr(scene, "model_channels", False) or not cfg.inputs.band_indexes
            else list(cfg.inputs.band_indexes),
            model_name=cfg.name,
            uri=scene.uri,
        )
        pre.check_scene(scene)
        if stats and pre.normalization.kind == "percentile":
            pre.compute_percentiles(scene, sample_budget)
        norms = pre.normalization.per_channel or [pre.normalization]
        pre.before_resampling = getattr(cfg, "resampling", None) is not None and bool(
            getattr(scene, "resampled", False)
        )
        if stats and any(n.kind in ("scene_zscore", "scene_rescale") for n in norms):
            native = any(n.native_stats for n in norms) or pre.before_resampling
            on = scene.unresampled() if native and hasattr(scene, "unresampled") else scene
            if pre.any_mask and (on is scene or pre.before_resampling):
                pre.compute_holes(on, sample_budget)
            pre.compute_moments(on, sample_budget)
        if stats and pre.before_resampling:
            pre.compute_native_range(
                scene.unresampled(), getattr(scene, "separate_axis", None), sample_budget
            )
        return pre

    def _norm_of(self, channel: int) -> Normalization:
        """The normalisation of one channel (``per_channel``'s own, else the one for all)."""
        per = self.normalization.per_channel
        return per[channel] if per else self.normalization

    @property
    def any_mask(self) -> bool:
        """Whether some channel is z-scored over nnU-Net's "any channel non-zero" mask."""
        norms = self.normalization.per_channel or [self.normalization]
        return any(n.kind == "scene_zscore" and n.nonzero and n.nonzero_mask == "any" for n in norms)

    @property
    def in_channels(self) -> int:
        return len(self.channels)

    def _indexes(self) -> list[int]:
        return [b - 1 for b in self.band_indexes] if self.band_indexes else list(range(self.in_channels))

    def _mismatch(self, have: int, word: str = "channels") -> InputError:
        want = f"expects {self.in_channels} ({','.join(self.channels)})"
        if self.band_indexes:
            want += f" from {word} {','.join(str(b) for b in self.band_indexes)}"
        elif have > self.in_channels:
            want += "; set inputs.band_indexes in the bundle to choose them"
        return InputError(f"scene has {have} {word}, bundle {self.model_name} {want}", path=self.uri or None)

    def check_scene(self, scene: Scene) -> None:
        """Raise InputError (naming the scene) when its channels cannot feed the model."""
        have = int(scene.shape[0])
        word = "bands" if isinstance(scene.meta, GeoMeta) else "channels"
        if self.band_indexes is not None:
            if max(self.band_indexes) > have:
                raise self._mismatch(have, word)
        elif have != self.in_channels:
            raise self._mismatch(have, word)

    def select(self, raw: np.ndarray) -> np.ndarray:
        """The model's channels, in its order, from a ``(C_scene, *box)`` read (no copy when identity)."""
        idx = self._indexes()
        if max(idx) >= raw.shape[0] or (self.band_indexes is None and raw.shape[0] != self.in_channels):
            raise self._mismatch(int(raw.shape[0]))
        if idx == list(range(raw.shape[0])):
            return raw
        return raw[idx]

    def compute_percentiles(self, scene: Scene, budget: int = SAMPLE_BUDGET) -> None:
        """Per-channel lower/upper percentiles of valid pixels from a sparse sample of the scene."""
        chunks: list[np.ndarray] = []
        for box in sample_boxes(tuple(scene.shape[1:]), budget):
            values = self.select(scene.read(box)).astype(np.float64).reshape(self.in_channels, -1)
            nodata = scene.read_nodata(box)
            if nodata is not None:
                values = values[:, ~np.asarray(nodata, dtype=bool).reshape(-1)]
            chunks.append(values)
        sample = np.concatenate(chunks, axis=1) if chunks else np.empty((self.in_channels, 0))
        lo = np.zeros(self.in_channels)
        hi = np.zeros(self.in_channels)
        for c in range(self.in_channels):
            v = sample[c][np.isfinite(sample[c])]
            if v.size:
                lo[c], hi[c] = np.percentile(v, [self.normalization.lower, self.normalization.upper])
        self.lower_values, self.upper_values = lo, hi

    def compute_holes(self, scene: Scene, slab_budget: int = SAMPLE_BUDGET) -> None:
        """nnU-Net's non-zero mask is ``binary_fill_holes`` of "non-zero in any channel": the zero
        voxels it encloses count as inside. Filling holes needs the whole mask at once, so this pass
        holds one byte per voxel of the (cropped) scene while it runs and keeps only the holes."""
        from scipy.ndimage import binary_fill_holes

        mask = np.zeros(tuple(int(n) for n in scene.shape[1:]), bool)
        for box in slabs(mask.shape, slab_budget):
            mask[box.slices()] = (self.select(scene.read(box)) != 0).any(axis=0)
        filled = binary_fill_holes(mask)
        self.holes = np.argwhere(filled & ~mask).astype(np.int32) if filled.sum() > mask.sum() else None

    def norm_mask(self, selected_raw: np.ndarray, box: Box) -> np.ndarray | None:
        """Where an "any" non-zero mask normalises over the scene region ``box``: non-zero in any
        channel, or a hole in that (None for every other normalisation)."""
        if not self.any_mask:
            return None
        mask = (selected_raw != 0).any(axis=0)
        if self.holes is not None and len(self.holes):
            start, stop = np.asarray(box.start), np.asarray(box.stop)
            inside = self.holes[((self.holes >= start) & (self.holes < stop)).all(axis=1)] - start
            mask[tuple(inside.T)] = True
        return mask

    def compute_moments(self, scene: Scene, slab_budget: int = SAMPLE_BUDGET) -> None:
        """Exact mean and (population) standard deviation of valid values, over every voxel of the
        scene, read in slabs of about ``slab_budget`` voxels and combined in float64 (Chan et al.)."""
        wise = self.normalization.channel_wise or self.normalization.kind == "per_channel"
        groups = self.in_channels if wise else 1
        count, mean, m2 = np.zeros(groups), np.zeros(groups), np.zeros(groups)
        low, high = np.full(groups, np.inf), np.full(groups, -np.inf)
        for box in slabs(tuple(int(n) for n in scene.shape[1:]), slab_budget):
            values = self.select(scene.read(box)).astype(np.float64)
            nodata = scene.read_nodata(box)
            valid = np.ones(values.shape, bool) if nodata is None else ~np.broadcast_to(nodata, values.shape)
            valid &= np.isfinite(values)
            any_mask = self.norm_mask(values, box)
            for g in range(groups):
                rule = self._norm_of(g)  # one rule for all channels unless per_channel
                keep = valid[g] if wise else valid
                if rule.nonzero and rule.nonzero_mask == "any":
                    keep = keep & any_mask  # type: ignore[operator]
                elif rule.nonzero:
                    keep = keep & ((values[g] if wise else values) != 0)
                v = values[g][keep] if wise else values[keep]
                if not v.size:
                    continue
                low[g], high[g] = min(low[g], float(v.min())), max(high[g], float(v.max()))
                n, mu = v.size, float(v.mean())
                delta, total = mu - mean[g], count[g] + n
                m2[g] += float(((v - mu) ** 2).sum()) + delta**2 * count[g] * n / total
                mean[g] += delta * n / total
                count[g] = total
        std = np.sqrt(np.divide(m2, count, out=np.zeros(groups), where=count > 0))
        std[std == 0] = 1.0  # a constant scene is shifted, not divided by zero (as MONAI does)
        self.scene_mean = np.resize(mean, self.in_channels)
        self.scene_std = np.resize(std, self.in_channels)
        self.scene_min = np.resize(np.where(count > 0, low, 0.0), self.in_channels)
        self.scene_max = np.resize(np.where(count > 0, high, 0.0), self.in_channels)

    def native_input(self, raw: np.ndarray, box: Box) -> np.ndarray:
        """The model's channels of a read of the file's own grid (region ``box``), normalised as nnU-Net
        normalises a case before resampling it (float32, its non-zero mask where it applies)."""
        x = self.select(raw)
        return self.prepare(x, None, self.norm_mask(x, box))

    def compute_native_range(self, scene: Scene, axis: int | None, slab_budget: int = SAMPLE_BUDGET) -> None:
        """Min and max of the normalised case on its own grid, per channel, and per slice along
        ``axis`` when given: the ranges ``skimage.transform.resize`` clips nnU-Net's resized case to
        (the whole case, or each slice when an anisotropic axis is resampled separately)."""
        spatial = tuple(int(n) for n in scene.shape[1:])
        count = 1 if axis is None else spatial[axis]
        low = np.full((self.in_channels, count), np.inf)
        high = np.full((self.in_channels, count), -np.inf)
        for box in slabs(spatial, slab_budget):
            x = self.native_input(scene.read(box), box)
            if axis is None:
                flat = x.reshape(x.shape[0], -1)
                low[:, 0] = np.minimum(low[:, 0], flat.min(axis=1))
                high[:, 0] = np.maximum(high[:, 0], flat.max(axis=1))
                continue
            others = tuple(1 + a for a in range(len(spatial)) if a != axis)
            at = slice(box.start[axis], box.stop[axis])
            low[:, at] = np.minimum(low[:, at], x.min(axis=others))
            high[:, at] = np.maximum(high[:, at], x.max(axis=others))
        self.native_range = np.stack([low, high], axis=-1)

    def _normalise(
        self, x: np.ndarray, channel: int | None = None, mask: np.ndarray | None = None
    ) -> np.ndarray:
        """Normalise ``x`` in place: all channels, or the one plane ``channel`` (shaped ``(1, ...)``);
        ``mask`` is :meth:`norm_mask` of ``x`` where it applies."""
        if mask is None and channel is None and self.any_mask:  # all channels here: no holes known
            mask = (x != 0).any(axis=0)
        if self.normalization.kind == "per_channel":  # each plane by its own rule, its statistics
            for c in range(x.shape[0]) if channel is None else [channel]:
                plane = x[c : c + 1] if channel is None else x
                self._normalise_with(plane, self._norm_of(c), slice(c, c + 1), slice(0, 1), mask)
            return x
        pick = slice(None) if channel is None else slice(channel, channel + 1)
        return self._normalise_with(x, self.normalization, pick, pick, mask if channel is None else None)

    def _normalise_with(
        self, x: np.ndarray, norm: Normalization, pick: slice, own: slice, mask: np.ndarray | None
    ) -> np.ndarray:
        """``x`` (the channels ``pick`` of the scene statistics, ``own`` of ``norm``'s lists) in place."""
        per_channel = (x.shape[0],) + (1,) * (x.ndim - 1)
        if norm.kind in ("zscore", "clip_zscore"):
            assert norm.mean is not None and norm.std is not None  # enforced by the bundle schema
            if norm.kind == "clip_zscore":  # nnU-Net's CT scheme: clip, then z-score
                assert norm.clip_lower is not None and norm.clip_upper is not None
                lo = np.asarray(norm.clip_lower, np.float32)[own].reshape(per_channel)
                np.clip(x, lo, np.asarray(norm.clip_upper, np.float32)[own].reshape(per_channel), out=x)
            x -= np.asarray(norm.mean, np.float32)[own].reshape(per_channel)
            x /= np.asarray(norm.std, np.float32)[own].reshape(per_channel)
        elif norm.kind == "percentile":
            if self.lower_values is None or self.upper_values is None:
                raise InputError(
                    "percentile statistics were not computed (use from_bundle)", path=self.uri or None
                )
            lo = self.lower_values.astype(np.float32)[pick].reshape(per_channel)
            span = (self.upper_values - self.lower_values).astype(np.float32)[pick]
            span[span <= 0] = 1.0  # constant channel: maps to 0 rather than dividing by zero
            np.clip(x, lo, lo + span.reshape(per_channel), out=x)
            x -= lo
            x /= span.reshape(per_channel)
        elif norm.kind == "ct_window":
            assert norm.center is not None and norm.width is not None
            low = norm.center - norm.width / 2
            np.clip(x, low, low + norm.width, out=x)
            x -= np.float32(low)
            x /= np.float32(norm.width)
            if (norm.out_min, norm.out_max) != (0.0, 1.0):
                x *= np.float32(norm.out_max - norm.out_min)
                x += np.float32(norm.out_min)
        elif norm.kind == "scale":
            x *= np.float32(norm.factor)
            x += np.float32(norm.offset)
        elif norm.kind == "scene_zscore":
            if self.scene_mean is None or self.scene_std is None:
                raise InputError(
                    "scene statistics were not computed (use from_bundle)", path=self.uri or None
                )
            mean = self.scene_mean.astype(np.float32)[pick].reshape(per_channel)
            std = self.scene_std.astype(np.float32)[pick].reshape(per_channel)
            if norm.nonzero and norm.nonzero_mask == "any" and mask is not None:
                np.copyto(x, (x - mean) / std, where=mask[None])
            elif norm.nonzero and norm.nonzero_mask == "channel":
                np.copyto(x, (x - mean) / std, where=x != 0)
            else:  # (one plane of an "any" mask: only its finiteness is asked, which is the same)
                x -= mean
                x /= std
        elif norm.kind == "scene_rescale":  # nnU-Net's RescaleTo01: (x - min) / max(max - min, 1e-8)
            if self.scene_min is None or self.scene_max is None:
                raise InputError(
                    "scene statistics were not computed (use from_bundle)", path=self.uri or None
                )
            low = self.scene_min.astype(np.float32)[pick].reshape(per_channel)
            span = np.maximum(self.scene_max - self.scene_min, 1e-8).astype(np.float32)[pick]
            x -= low
            x /= span.reshape(per_channel)
        return x

    def invalid(
        self, raw: np.ndarray, nodata_mask: np.ndarray | None = None, *, selected: bool = False
    ) -> np.ndarray:
        """The boolean ``box`` mask of pixels the model must not see: nodata, or non-finite in any
        channel once normalised. One plane at a time, so a block costs one plane-sized temporary."""
        x = raw if selected else self.select(raw)
        invalid = np.zeros(x.shape[1:], dtype=bool)
        # 8- and 16-bit integers: normalise every value the dtype holds once (a table), not the block
        table = x.dtype.kind in "iu" and x.dtype.itemsize <= 2
        low, high = (int(np.iinfo(x.dtype).min), int(np.iinfo(x.dtype).max)) if table else (0, 0)
        for c in range(x.shape[0]):
            if table:
                plane = np.arange(low, high + 1).astype(x.dtype).astype(np.float32)[None]
            else:
                plane = x[c : c + 1].astype(np.float32, copy=True)
            with np.errstate(invalid="ignore", over="ignore"):
                finite = np.isfinite(self._normalise(plane, c)[0])
            if not table:
                invalid |= ~finite
            elif not finite.all():  # some values normalise to inf or NaN: look the block's up
                invalid |= ~finite[x[c].astype(np.int64) - low]
        if nodata_mask is not None:
            mask = np.asarray(nodata_mask, dtype=bool)
            if mask.shape != x.shape[1:]:
                raise InputError(
                    f"nodata mask shape {mask.shape} != pixel shape {x.shape[1:]}", path=self.uri or None
                )
            invalid |= mask
        return invalid

    def prepare(
        self,
        selected_raw: np.ndarray,
        invalid: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        *,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Normalised float32 model input for raw pixels of the model's channels; ``invalid`` ones 0.

        Elementwise, so normalising a window of a block gives the same values as normalising the
        block: the engine keeps blocks raw (a quarter of the memory for 8-bit imagery) and
        normalises each window as it is batched, straight into its batch slot (``out``, float32).
        """
        if out is None:
            x = selected_raw.astype(np.float32, copy=True)
        else:
            x = out
            np.copyto(x, selected_raw, casting="unsafe")  # the same conversion as astype
        with np.errstate(invalid="ignore", over="ignore"):
            x = self._normalise(x, mask=mask)
        if invalid is not None:
            np.copyto(x, 0.0, where=invalid)
        return x

    def apply(
        self,
        raw: np.ndarray,
        nodata_mask: np.ndarray | None = None,
        *,
        selected: bool = False,
        box: Box | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Normalised float32 ``(C_model, *box)`` and the boolean ``box`` mask of invalid pixels.

        Invalid means nodata or non-finite in any channel; those pixels are 0 in the output, set
        after normalisation so the model never sees NaN or a nodata sentinel scaled into range.
        """
        x = raw if selected else self.select(raw)
        invalid = self.invalid(x, nodata_mask, selected=True)
        mask = None if box is None else self.norm_mask(x, box)
        return self.prepare(x, invalid if invalid.any() else None, mask), invalid

    def __call__(
        self, raw: np.ndarray, nodata_mask: np.ndarray | None = None, box: Box | None = None
    ) -> np.ndarray:
        """Normalised float32 model input for a raw scene read (of ``box``, which an nnU-Net mask with
        holes needs); see :meth:`apply` for the mask."""
        return self.apply(raw, nodata_mask, box=box)[0]
