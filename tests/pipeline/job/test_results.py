"""One failure reason for every way of running a job: it names the scene, says what is wrong on one
line, and never carries a credential."""

from __future__ import annotations

from pipeline.errors import FormatError, InputError
from pipeline.job.results import OUT_OF_MEMORY, failed_result, failure_reason

URI = "s3://bucket/scenes/a.tif?X-Amz-Signature=abcdef123456&X-Amz-Credential=AKIAXYZ"


def test_a_tilewise_error_that_names_its_file_is_not_prefixed_again():
    exc = FormatError("truncated TIFF\n  (strip 3)", path="/data/a.tif")
    assert failure_reason(exc, "/data/a.tif") == "/data/a.tif: truncated TIFF (strip 3)"


def test_an_error_without_a_file_gets_the_scene_and_is_redacted():
    reason = failure_reason(InputError("3 bands, the bundle needs 4"), URI)
    assert reason.endswith(": 3 bands, the bundle needs 4")
    assert "abcdef123456" not in reason and "AKIAXYZ" not in reason and "s3://bucket/scenes/a.tif" in reason


def test_unexpected_errors_and_memory_say_what_they_are():
    assert failure_reason(KeyError("band"), "x.tif") == "x.tif: internal error KeyError: 'band'"
    assert failure_reason(MemoryError(), "x.tif") == f"x.tif: {OUT_OF_MEMORY}"
    assert failure_reason(ValueError("bad")) == "internal error ValueError: bad"


def test_failed_result_keeps_a_redacted_traceback_only_for_unexpected_errors():
    try:
        raise RuntimeError(f"while reading {URI}")
    except RuntimeError as exc:
        unexpected = failed_result(URI, "a", exc, 1.23456)
    assert unexpected.status == "failed" and unexpected.seconds == 1.235
    assert "RuntimeError" in unexpected.report["traceback"]
    assert "abcdef123456" not in unexpected.report["traceback"] + unexpected.reason
    deliberate = failed_result(URI, "a", InputError("empty scene"))
    assert "traceback" not in deliberate.report and deliberate.reason.endswith("empty scene")
