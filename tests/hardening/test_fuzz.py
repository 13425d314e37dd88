"""Hypothesis fuzzing of the readers and the tiling planner (targets in ``fuzzing.py``).

Counts here are kept small for ``make test``; ``benchmarks/soak_faults.py fuzz`` runs the same targets
with thousands of inputs and prints how many were tried and how each ended.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings

from . import fuzzing
from .conftest import DATA_DIR

QUICK = settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@QUICK
@given(fuzzing.tiff_inputs(DATA_DIR))
def test_geotiff_reader_raises_only_our_errors(blob: bytes) -> None:
    fuzzing.check_tiff(blob)


@QUICK
@given(fuzzing.nii_inputs(DATA_DIR))
def test_nifti_reader_raises_only_our_errors(case: tuple[bytes, bool]) -> None:
    fuzzing.check_nii(*case)


@settings(QUICK, max_examples=80)
@given(fuzzing.zarr_inputs())
def test_zarr_reader_raises_only_our_errors(case: tuple[str, str, Any]) -> None:
    fuzzing.check_zarr(*case)


@settings(QUICK, max_examples=500)
@given(fuzzing.plan_inputs())
def test_planner_valid_plans_partition_invalid_ones_raise_value_error(case: dict[str, Any]) -> None:
    fuzzing.check_plan(case)


@settings(QUICK, max_examples=150)
@given(fuzzing.infer_inputs())
def test_block_size_never_changes_results(case: dict[str, Any]) -> None:
    fuzzing.check_infer(case)
