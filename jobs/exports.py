"""Placeholder: `export_dataset` is being written."""

from __future__ import annotations

from jobs.models import ExportPayload, ExportResult
from worker.runner import JobRun, etl_job


@etl_job(name="export_dataset", payload=ExportPayload, result=ExportResult, timeout_s=3600)
async def export_dataset(run: JobRun, payload: ExportPayload) -> ExportResult:
    raise NotImplementedError("export_dataset")
