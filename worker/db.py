"""Engine and session factories, and the raw asyncpg connection behind a SQLAlchemy one."""

from __future__ import annotations

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from worker.settings import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    """The process's one engine; the worker creates it at start-up and disposes of it at exit."""
    return create_async_engine(
        settings.sqlalchemy_url(),
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_recycle=settings.pool_recycle,
        pool_pre_ping=settings.pool_pre_ping,
        connect_args={
            "server_settings": {
                "application_name": "etl-worker",
                # asyncpg prepares every statement; after five runs PostgreSQL may switch to a
                # generic plan costed on the table as it was then. Planned on an empty ledger,
                # `id = ANY($1)` became a sequential scan that stayed until autoanalyze (a batch
                # went from 25 ms to 5.6 s). Planning these few statements each time is cheap.
                "plan_cache_mode": "force_custom_plan",
            }
        },
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def driver_connection(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under `conn`, inside `conn`'s transaction.

    SQLAlchemy's asyncpg adapter sends BEGIN lazily, with the first statement. A COPY sent through
    the raw connection before that would run in autocommit and could not be rolled back, so a
    statement runs first to make sure the transaction has begun.
    """
    await conn.execute(text("select 1"))
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert isinstance(driver, asyncpg.Connection)
    return driver
