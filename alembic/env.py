"""Alembic environment: async, with the URL taken from the service's settings."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from alembic import context
from jobs.schema import metadata
from worker import embedded
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


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(_url(), poolclass=NullPool)
    try:
        async with engine.connect() as connection:
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
