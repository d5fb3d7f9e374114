"""Placeholder: `import_file` is being written."""

from __future__ import annotations

from jobs.models import ImportFilePayload, ImportResult
from worker.runner import JobRun, etl_job


@etl_job(name="import_file", payload=ImportFilePayload, result=ImportResult, timeout_s=3600)
async def import_file(run: JobRun, payload: ImportFilePayload) -> ImportResult:
    raise NotImplementedError("import_file")
