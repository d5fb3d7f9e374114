"""Alembic environment: async, with the URL taken from the service's settings.

Each migration's connection gets the service's lock and statement timeouts, and each revision
runs in its own transaction, so a migration never holds up the workers for long
(worker/migrate.py says why, and how to write a revision that does not stop the service).
"""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from alembic import context
from jobs.schema import metadata
from worker import embedded
from worker.migrate import MigrationTimeouts, check_timeouts
from worker.settings import get_settings

config = context.config


def _url() -> str:
    # `etl migrate` and tests pass the URL in; plain `alembic upgrade head` reads the settings.
    given = config.attributes.get("database_url")
    if given:
        return str(given)
    settings = embedded.resolve(get_settings())
    assert settings.database_url is not None
    return settings.database_url


def _timeouts() -> MigrationTimeouts:
    given = config.attributes.get("timeouts")
    return given if isinstance(given, MigrationTimeouts) else MigrationTimeouts.of(get_settings())


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    timeouts = _timeouts()
    engine = create_async_engine(
        _url(),
        poolclass=NullPool,
        # For the whole session, CONCURRENTLY steps (outside any transaction) included.
        connect_args={"server_settings": timeouts.server_settings()},
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(check_timeouts, timeouts)
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        asyncio.run(_run_async())


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported: run `etl migrate`")
run_migrations_online()
