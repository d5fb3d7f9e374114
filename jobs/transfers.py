"""Placeholder: `transfer_funds` is being written."""

from __future__ import annotations

from jobs.models import TransferPayload, TransferResult
from worker.runner import JobRun, etl_job


@etl_job(name="transfer_funds", payload=TransferPayload, result=TransferResult, timeout_s=3600)
async def transfer_funds(run: JobRun, payload: TransferPayload) -> TransferResult:
    raise NotImplementedError("transfer_funds")
