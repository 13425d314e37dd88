"""What a run tells people: a summary object for callers, and Prefect artifacts for the UI.

Artifact keys are stable per job target (``tilewise-<kind>-<slug>-summary`` / ``-scenes``), so the UI
shows the history of one bucket or folder under one key. Everything published passes through
``redact`` (pipeline.errors) first: error reasons can quote URLs, and URLs can carry credentials.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import redact
from pipeline.job.results import SceneResult


@dataclass
class RunSummary:
    """The outcome of one folder or bucket run. ``results`` holds the scenes this run processed."""

    kind: str  # folder | bucket
    target: str  # output folder or prefix
    results: list[SceneResult] = field(default_factory=list)
    listed: int = 0  # scenes found under the input
    unchanged: int = 0  # bucket: already processed with the same bundle and config (manifest)
    seconds: float = 0.0
    model: str = ""
    bundle_hash: str = ""
    flow_run_id: str | None = None

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[SceneResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def processed(self) -> int:
        return len(self.results)

    def headline(self) -> str:
        parts = [
            f"{self.count('ok')} ok",
            f"{self.count('failed')} failed",
            f"{self.count('skipped')} skipped",
        ]
        if self.kind == "bucket":
            parts.append(f"{self.unchanged} unchanged")
        return " · ".join(parts)

    def failure_message(self) -> str:
        bad = self.failed
        first = "; ".join(r.reason for r in bad[:3]) + (" ..." if len(bad) > 3 else "")
        return f"{len(bad)} of {self.processed} scenes failed: {first}"


class ScenesFailed(Exception):
    """Raised by a flow called directly when any scene failed; carries the whole summary.

    The flow run itself ends in a Failed state with this as its data (no traceback is logged: a bad
    scene is an outcome, not a crash).
    """

    def __init__(self, summary: RunSummary) -> None:
        self.summary = summary
        super().__init__(summary.failure_message())

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.summary,))


def artifact_key(kind: str, target: str) -> str:
    """A stable Prefect artifact key for a job target: lowercase letters, digits and dashes only."""
    slug = re.sub(r"[^a-z0-9]+", "-", redact(target).lower()).strip("-")[-40:].strip("-")
    digest = hashlib.sha1(target.encode()).hexdigest()[:6]
    return f"tilewise-{kind}-{slug}-{digest}" if slug else f"tilewise-{kind}-{digest}"


def class_summary(report: dict[str, Any], limit: int = 6) -> str:
    """``water 1.2 ha, land 3.4 ha`` from a scene report (areas, volumes, or pixels when unknown)."""
    parts = []
    for row in report.get("classes", [])[:limit]:
        if "area_ha" in row:
            parts.append(f"{row['name']} {row['area_ha']:g} ha")
        elif "volume_ml" in row:
            parts.append(f"{row['name']} {row['volume_ml']:g} mL")
        else:
            parts.append(f"{row['name']} {row['pixels']} px")
    return ", ".join(parts)


def _detail(r: SceneResult) -> str:
    return r.reason or r.outputs.get("labels", "")


def table_rows(summary: RunSummary) -> list[dict[str, Any]]:
    return [
        {
            "scene": r.stem,
            "input": redact(r.uri),
            "status": r.status,
            "seconds": r.seconds,
            "windows": r.windows,
            "classes": class_summary(r.report),
            "outputs_or_reason": redact(_detail(r)),
        }
        for r in summary.results
    ]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(summary: RunSummary) -> str:
    lines = [
        f"# tilewise {summary.kind} run",
        "",
        f"**{summary.headline()}** of {summary.listed} scenes listed, in {summary.seconds:.1f} s",
        "",
        f"- output: `{_cell(summary.target)}`",
        f"- model: `{_cell(summary.model)}` (`{summary.bundle_hash[:12]}`)",
        "",
    ]
    if summary.results:
        lines += [
            "| scene | status | seconds | windows | classes | outputs / reason |",
            "|---|---|---|---|---|---|",
        ]
        for row in table_rows(summary):
            cells = [row["scene"], row["status"], f"{row['seconds']:.1f}", row["windows"], row["classes"]]
            lines.append("| " + " | ".join(_cell(c) for c in [*cells, row["outputs_or_reason"]]) + " |")
    else:
        lines.append("_No scene needed processing._")
    return redact("\n".join(lines) + "\n")


def publish(summary: RunSummary) -> tuple[str, str]:
    """Create the markdown and table artifacts of this flow run; returns their keys."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    base = artifact_key(summary.kind, summary.target)
    description = redact(f"tilewise {summary.kind} run into {summary.target}: {summary.headline()}")
    create_markdown_artifact(markdown(summary), key=f"{base}-summary", description=description)
    rows = table_rows(summary) or [{"scene": "", "status": "none processed"}]
    create_table_artifact(rows, key=f"{base}-scenes", description=description)
    return f"{base}-summary", f"{base}-scenes"
