"""Job configuration: one pydantic model, loaded from YAML (``configs/*.yaml``), overridden by flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import ConfigError


class TilingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patch_size: list[int] | None = None  # default: the bundle's
    overlap: float | None = Field(default=None, ge=0.0, lt=1.0)
    blend: Literal["gaussian", "constant", "cosine", "crop"] = "gaussian"
    sigma_scale: float = Field(default=0.125, gt=0.0)
    block_size: list[int] | None = None  # default: from the memory budget
    memory_budget_mb: int = Field(default=64, ge=8)  # per block accumulator; the worker holds ~5x


class ExecutionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(default=4, ge=1)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")  # cuda:N: that GPU
    # CUDA only (the CPU path ignores them): autocast dtype (fp32 accumulation either way), NHWC
    # layout for convolutions, torch.compile of the model
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    channels_last: bool = False
    compile: bool = False
    tta: bool = False
    workers: int = Field(default=0, ge=0)  # 0: run in this process; N: a local Dask cluster
    threads_per_worker: int = Field(default=1, ge=1)
    scheduler: str | None = None  # tcp:// or tls://host:8786 of an existing Dask cluster
    wait: bool = False  # a scene another live run holds: wait for it (else skip it)
    lease_timeout_s: float = Field(default=120.0, gt=0.0)  # a lease not renewed for this long is stale
    # who runs a one-off job: a tracked Prefect flow run, or the job skeleton alone (flows/oneoff.py);
    # auto: Prefect when PREFECT_API_URL is set or the output is a bucket
    orchestrator: Literal["auto", "prefect", "none"] = "auto"


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["auto", "geotiff", "nifti", "zarr"] = "auto"
    probabilities: bool = False
    polygons: bool = False
    quicklook: bool = True
    min_object_size: int = Field(default=0, ge=0)
    keep_largest: bool = False  # per class, only the largest connected component stays
    nnunet_names: bool = False  # labels named CASE.nii.gz as nnU-Net names them (no _0000, no _labels)
    nodata_label: int = Field(default=255, ge=0, le=255)
    overwrite: bool = False
    keep_work: bool = False


class InputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bands: dict[str, str] = Field(default_factory=dict)  # STAC input: bundle channel -> asset or band


class JobConfig(BaseModel):
    """A whole job. ``input``/``output``/``model`` may come from the command line instead."""

    model_config = ConfigDict(extra="forbid")

    input: str | None = None
    output: str | None = None
    model: str | None = None
    inputs: InputConfig = Field(default_factory=InputConfig)
    # options of the model's kind (models.bundle.sources): nnU-Net's folds, a MONAI bundle's trust_code
    model_options: dict[str, Any] = Field(default_factory=dict)
    trust_pickle: bool = False  # allow checkpoints that need full unpickling (arbitrary code)
    tiling: TilingConfig = Field(default_factory=TilingConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    outputs: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("input", "output", "model")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty")
        return v

    def hash_fields(self) -> dict[str, Any]:
        """The settings that change results (for resumption and the bucket manifest)."""
        return {
            "tiling": self.tiling.model_dump(),
            **({"bands": dict(sorted(self.inputs.bands.items()))} if self.inputs.bands else {}),
            "tta": self.execution.tta,
            "probabilities": self.outputs.probabilities,
            "nodata_label": self.outputs.nodata_label,
            "min_object_size": self.outputs.min_object_size,
            # only when set, so the hash of every config without it (bucket manifests) is unchanged
            **({"keep_largest": True} if self.outputs.keep_largest else {}),
            **({"nnunet_names": True} if self.outputs.nnunet_names else {}),
        }


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> JobConfig:
    """Validate a YAML job file (safe loader) merged with ``overrides`` (dotted keys, None skipped)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config: {exc.strerror or exc}", path=str(p)) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML: {str(exc).splitlines()[0]}", path=str(p)) from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("a job config must be a mapping", path=str(p))
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{where}: {first['msg']}", path=str(path) if path else None) from exc
