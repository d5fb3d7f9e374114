"""Placeholder: `upsert_rows` is being written."""

from __future__ import annotations

from jobs.models import UpsertResult, UpsertRowsPayload
from worker.runner import JobRun, etl_job


@etl_job(name="upsert_rows", payload=UpsertRowsPayload, result=UpsertResult, timeout_s=3600)
async def upsert_rows(run: JobRun, payload: UpsertRowsPayload) -> UpsertResult:
    raise NotImplementedError("upsert_rows")
