"""What one scene's run comes to, and the one line that says why a scene failed.

The plain runner, the Prefect flows and the bucket upload all describe a failure with
``failure_reason``, so a reason reads the same wherever it is shown and never carries a credential.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import TilewiseError, redact

OUT_OF_MEMORY = "out of memory; lower tiling.memory_budget_mb or --batch-size"


@dataclass
class SceneResult:
    uri: str
    stem: str
    status: str  # ok | skipped | failed
    reason: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    windows: int = 0
    pixels: int = 0
    report: dict[str, Any] = field(default_factory=dict)


def failure_reason(exc: BaseException, uri: str | None = None) -> str:
    """One redacted line: the scene (unless the error already names its file) and what is wrong."""
    if isinstance(exc, TilewiseError):
        text = str(exc)
    elif isinstance(exc, MemoryError):
        text = OUT_OF_MEMORY
    else:
        text = f"internal error {type(exc).__name__}: {exc}"
    text = redact(" ".join(text.split()))
    named = isinstance(exc, TilewiseError) and exc.path is not None
    return f"{redact(uri)}: {text}" if uri and not named else text


def failed_result(uri: str, stem: str, exc: BaseException, seconds: float = 0.0) -> SceneResult:
    """A failed scene; an unexpected error keeps a short, redacted traceback in its report."""
    result = SceneResult(uri, stem, "failed", reason=failure_reason(exc, uri), seconds=round(seconds, 3))
    if not isinstance(exc, TilewiseError):
        result.report["traceback"] = redact("".join(traceback.format_exception(exc, limit=8)))
    return result
