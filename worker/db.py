"""The engine and the session factory: created once per process, disposed of at exit."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from worker.settings import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    """The process's one engine; the worker creates it at start-up and disposes of it at exit.

    DB_POOL=null gives each unit of work a new connection (pgbouncer pools them; a short-lived
    process keeps none). DB_STATEMENT_CACHE=off makes every statement an unnamed one, prepared
    and run inside its transaction, as pgbouncer's transaction mode needs.
    """
    connect_args = _connect_args(statement_cache=settings.statement_cache)
    if settings.pool == "null":
        return create_async_engine(
            settings.sqlalchemy_url(), poolclass=NullPool, connect_args=connect_args
        )
    return create_async_engine(
        settings.sqlalchemy_url(),
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_recycle=settings.pool_recycle,
        pool_pre_ping=settings.pool_pre_ping,
        connect_args=connect_args,
    )


def _connect_args(*, statement_cache: bool) -> dict[str, Any]:
    if not statement_cache:
        # No plan_cache_mode here: an unnamed statement is planned for its parameters at each
        # run anyway, and pgbouncer (1.18) refuses a startup parameter it does not know, while
        # it passes application_name on itself.
        return {
            "server_settings": {"application_name": "etl-worker"},
            "statement_cache_size": 0,  # asyncpg's own cache
            "prepared_statement_cache_size": 0,  # SQLAlchemy's asyncpg dialect's cache
        }
    return {
        "server_settings": {
            "application_name": "etl-worker",
            # asyncpg prepares every statement; after five runs PostgreSQL may switch to a
            # generic plan costed on the table as it was then. Planned on an empty ledger,
            # `id = ANY($1)` became a sequential scan that stayed until autoanalyze
            # (tests/integration/test_db.py). Planning these statements each time is cheap.
            "plan_cache_mode": "force_custom_plan",
        }
    }


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
