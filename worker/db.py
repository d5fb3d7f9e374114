"""The engine and the session factory: created once per process, disposed of at exit."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import (
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
                # `id = ANY($1)` became a sequential scan that stayed until autoanalyze
                # (tests/integration/test_db.py). Planning these statements each time is cheap.
                "plan_cache_mode": "force_custom_plan",
            }
        },
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
