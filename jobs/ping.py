"""`ping`: a job that only touches the database; used by `etl check`, smoke tests and benchmarks."""

from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy import text

from jobs.models import Payload
from jobs.spec import JobRun, etl_job


class PingPayload(Payload):
    touch_db: bool = True


class PingResult(BaseModel):
    pong: bool
    database: bool


@etl_job(name="ping", payload=PingPayload, result=PingResult, timeout_s=30)
async def ping(run: JobRun, payload: PingPayload) -> PingResult:
    if payload.touch_db:
        async with run.sessionmaker() as session:
            await session.execute(text("select 1"))
    return PingResult(pong=True, database=payload.touch_db)
