"""Placeholder: `nightly_export` is being written."""

from __future__ import annotations

from jobs.models import NightlyResult, Payload
from worker.runner import JobRun, etl_job


class NightlyPayload(Payload):
    pass


@etl_job(name="nightly_export", payload=NightlyPayload, result=NightlyResult, timeout_s=3600)
async def nightly_export(run: JobRun, payload: NightlyPayload) -> NightlyResult:
    raise NotImplementedError("nightly_export")
