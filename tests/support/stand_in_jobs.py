"""Jobs the fault tests run next to the real ones: their length and their writes are known.

`load_customers` writes many rows in one transaction, in chunks with pauses, like a large import;
`nap` writes one row and holds its transaction open for a while. The worker process of the fault
tests registers them beside the service's own jobs.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field
from sqlalchemy import text

from jobs.models import Payload
from jobs.spec import JobRun, JobSpec, etl_job


class LoadPayload(Payload):
    prefix: str = Field(min_length=1)
    rows: int = Field(ge=1)
    chunk: int = Field(default=1000, ge=1)
    pause_s: float = Field(default=0.05, ge=0)


class LoadResult(BaseModel):
    rows: int
    tries: int


@etl_job(name="load_customers", payload=LoadPayload, result=LoadResult, timeout_s=600)
async def load_customers(run: JobRun, payload: LoadPayload) -> LoadResult:
    """Insert `rows` customers `<prefix>-<n>` in one transaction: all of them or none."""
    async with run.sessionmaker() as session, session.begin():
        conn = await session.connection()
        for low in range(1, payload.rows + 1, payload.chunk):
            high = min(low + payload.chunk - 1, payload.rows)
            await conn.execute(
                text(
                    "insert into customers (external_id, email, full_name, country, created_at) "
                    "select :prefix || '-' || n, :prefix || n || '@example.com', 'Load ' || n, "
                    "'FR', now() from generate_series(cast(:low as int), cast(:high as int)) n"
                ),
                {"prefix": payload.prefix, "low": low, "high": high},
            )
            await run.progress(rows=high)
            await asyncio.sleep(payload.pause_s)
    return LoadResult(rows=payload.rows, tries=run.job_try)


class NapPayload(Payload):
    key: str = Field(min_length=1)
    seconds: float = Field(ge=0)
    seconds_when_retried: float | None = Field(default=None, ge=0)
    """How long later tries hold the transaction (default: `seconds`)."""


class NapResult(BaseModel):
    key: str
    tries: int


@etl_job(name="nap", payload=NapPayload, result=NapResult, timeout_s=600)
async def nap(run: JobRun, payload: NapPayload) -> NapResult:
    """Write one customer, then keep the transaction open `seconds` before committing."""
    async with run.sessionmaker() as session, session.begin():
        conn = await session.connection()
        await conn.execute(
            text(
                "insert into customers (external_id, email, full_name, country, created_at) "
                "values (:key, :key || '@example.com', 'Nap', 'FR', now())"
            ),
            {"key": payload.key},
        )
        later = payload.seconds_when_retried
        await asyncio.sleep(payload.seconds if run.job_try == 1 or later is None else later)
    return NapResult(key=payload.key, tries=run.job_try)


STAND_INS: tuple[JobSpec[Payload, BaseModel], ...] = (load_customers, nap)  # type: ignore[assignment]
