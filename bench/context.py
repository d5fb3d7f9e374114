"""What every scenario gets: sizes, the benchmark database, the app's resources, psql's args."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text

from bench import database
from bench.pgclient import PgClient
from worker.context import CTX_KEY, AppContext
from worker.settings import Settings


@dataclass(frozen=True)
class BenchContext:
    rows: int
    """N: rows per import, upsert and export, and the scale of the other scenarios."""
    rounds: int
    pgbench_seconds: int
    settings: Settings
    """The service's settings, pointed at the benchmark database and its own directories."""
    app: AppContext
    client: PgClient
    workdir: Path

    @property
    def url(self) -> str:
        assert self.settings.database_url is not None
        return self.settings.database_url

    def job_ctx(self) -> dict[str, Any]:
        """arq's ctx as the worker builds it, for calling a job's `run` directly."""
        return {CTX_KEY: self.app, "job_id": f"bench-{uuid.uuid4().hex[:12]}", "job_try": 1}

    def queue_name(self) -> str:
        """A queue no one else uses, so nothing but this run's jobs is in it."""
        return f"etl:bench:{uuid.uuid4().hex}"

    async def sql(self, *statements: str) -> None:
        await database.execute(self.url, *statements)

    async def reset(self, *fill: str, analyze: str = "customers, accounts") -> None:
        """Empty every table, run the `fill` statements, refresh the planner's statistics, and
        flush what that wrote.

        Without the CHECKPOINT, the server writes the fill's (or an earlier scenario's) pages out
        while the next run is being timed: a batch of transfers after the 5xN export fill once
        ran eight times slower than on its own.
        """
        await self.sql(database.truncate_all(), *fill, f"vacuum analyze {analyze}")
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await self.sql("checkpoint")  # superuser or pg_checkpoint only: else runs are noisier
        # Each round starts on fresh connections, as after a worker restart. A pooled connection
        # keeps its prepared statements across the TRUNCATE, and PostgreSQL re-plans them as the
        # generic plan it had settled on, costed on the now empty table: transfer_funds' ledger
        # check then ran as a sequential scan that slowed every batch until autoanalyze came.
        await self.app.engine.dispose()
        async with self.app.engine.connect() as conn:  # its connection time is not the job's
            await conn.execute(text("select 1"))

    async def count(self, table: str) -> int:
        value = await database.fetchval(self.url, f"select count(*) from {table}")
        assert isinstance(value, int)
        return value
