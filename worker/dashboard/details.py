"""One job in full, for its page and for /api/jobs/<id>: state, timings, progress, and what its
family adds (an import's rejected lines, an export's files)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jobs.imports.job import import_id_for
from jobs.imports.quarantine import RejectedLine
from jobs.pages import Page
from worker.dashboard import views
from worker.dashboard.files import ExportFileInfo, file_info
from worker.dashboard.state import Dashboard
from worker.status import JobState

REJECTS_PAGE = 50
_EXPORTING = ("export_dataset", "nightly_export")


@dataclass
class JobDetails:
    state: JobState
    started_at: datetime | None = None
    """For a running job, when its worker started it (from the worker registry)."""
    worker: str | None = None
    progress: views.Progress | None = None
    import_id: uuid.UUID | None = None
    rejects: Page[RejectedLine, int] | None = None
    rejects_after: int | None = None
    rejects_error: str | None = None
    files: list[tuple[str, ExportFileInfo | None]] = field(default_factory=list)
    """(dataset, file) for each file an export wrote; None for a path outside the export dir."""

    @property
    def queue_wait_s(self) -> float | None:
        return views.between(self.state.enqueued_at, self.state.started_at)

    @property
    def run_s(self) -> float | None:
        return views.between(self.state.started_at or self.started_at, self.state.finished_at)

    def as_json(self) -> dict[str, Any]:
        out = views.job_json(self.state)
        if self.worker is not None:
            out["worker"] = self.worker
        if self.progress is not None:
            out["progress_rate_per_s"] = self.progress.rate
            out["progress_eta_s"] = self.progress.eta_s
        if self.import_id is not None:
            out["import_id"] = str(self.import_id)
        if self.rejects is not None:
            out["rejects"] = {
                "rows": [views.redact(r.model_dump(mode="json")) for r in self.rejects.rows],
                "next_after": self.rejects.next_after,
            }
        if self.rejects_error is not None:
            out["rejects_error"] = self.rejects_error
        if self.files:
            out["files"] = [
                {"dataset": dataset, "file": None if info is None else _file_json(info)}
                for dataset, info in self.files
            ]
        return out


def _file_json(info: ExportFileInfo) -> dict[str, Any]:
    return {
        "path": info.relative,
        "exists": info.exists,
        "bytes": info.bytes,
        "download": f"/download?path={quote(info.relative)}" if info.exists else None,
        "manifest": info.manifest,
    }


def _import_id(state: JobState) -> uuid.UUID:
    result = state.result if isinstance(state.result, dict) else {}
    try:
        return uuid.UUID(str(result["import_id"]))
    except (KeyError, ValueError):
        return import_id_for(state.job_id)  # every try of a job uses this one


def _export_paths(state: JobState) -> list[tuple[str, str]]:
    result = state.result if isinstance(state.result, dict) else {}
    exports = result.get("exports") if state.function == "nightly_export" else [result]
    return [
        (str(e.get("dataset", "?")), e["path"])
        for e in (exports if isinstance(exports, list) else [])
        if isinstance(e, dict) and isinstance(e.get("path"), str)
    ]


async def job_details(d: Dashboard, job_id: str, *, rejects_after: int | None) -> JobDetails:
    (state,) = await d.queries.states([job_id])
    details = JobDetails(state)
    if state.state == "in_progress":
        for worker in await d.queries.workers():
            if job_id in worker.running:
                details.started_at = worker.running[job_id]
                details.worker = f"{worker.host} pid {worker.pid}"
        details.progress = views.progress_of(
            state.progress, started_at=details.started_at, now=datetime.now(UTC)
        )
    if state.function == "import_file" and state.state != "not_found":
        details.import_id = _import_id(state)
        details.rejects_after = rejects_after
        try:
            details.rejects = await d.client.rejects(
                details.import_id, after=rejects_after, limit=REJECTS_PAGE
            )
        except Exception as exc:  # PostgreSQL away or not configured: the rest still shows
            details.rejects_error = f"rejected lines unavailable: {type(exc).__name__}"
    export_dir = d.settings.export_dir
    # Files in a bucket are not looked at from here: the result's path names them.
    if state.function in _EXPORTING and state.state == "complete" and isinstance(export_dir, Path):
        details.files = [
            (dataset, await asyncio.to_thread(file_info, export_dir, path))
            for dataset, path in _export_paths(state)
        ]
    return details
