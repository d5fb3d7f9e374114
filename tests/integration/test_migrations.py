"""The migrations build the schema the jobs use, go down cleanly, and match jobs/schema.py."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from jobs.schema import metadata
from tests.support.database import migrate
from worker.settings import Settings, normalise_database_url


@pytest.fixture
def scratch_url(server_settings: Settings) -> Iterator[str]:
    assert server_settings.database_url is not None
    admin = make_url(server_settings.database_url).set(drivername="postgresql")
    name = f"etl_mig_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def admin_exec(sql: str) -> None:
        conn = await asyncpg.connect(admin.render_as_string(False))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin_exec(f'create database "{name}"'))
    yield normalise_database_url(admin.set(database=name).render_as_string(False))
    asyncio.run(admin_exec(f'drop database if exists "{name}" with (force)'))


def _inspect(url: str) -> tuple[set[str], list[tuple[object, ...]]]:
    # Alembic compares on a sync connection: run_sync gives one over asyncpg, no second driver.
    async def go() -> tuple[set[str], list[tuple[object, ...]]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:

                def work(sync: Connection) -> tuple[set[str], list[tuple[object, ...]]]:
                    tables = set(inspect(sync).get_table_names())
                    diff = compare_metadata(
                        MigrationContext.configure(sync, opts={"compare_type": True}), metadata
                    )
                    return tables, list(diff)

                return await conn.run_sync(work)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def test_upgrade_downgrade_upgrade_and_models_agree(scratch_url: str) -> None:
    migrate(scratch_url, "head")
    tables, diff = _inspect(scratch_url)
    assert set(metadata.tables) <= tables
    assert diff == [], f"models and migrations disagree: {diff}"

    migrate(scratch_url, "base", down=True)
    tables, _ = _inspect(scratch_url)
    assert tables == {"alembic_version"}

    migrate(scratch_url, "head")
    tables, diff = _inspect(scratch_url)
    assert set(metadata.tables) <= tables
    assert diff == []
