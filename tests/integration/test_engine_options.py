"""DB_POOL and DB_STATEMENT_CACHE: the engine create_engine builds from them."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool

from jobs.db import driver_connection
from worker.db import create_engine
from worker.settings import Settings


def test_the_settings_read_the_pool_choice_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DB_POOL", "null")
    monkeypatch.setenv("DB_STATEMENT_CACHE", "off")
    settings = Settings()
    assert (settings.pool, settings.statement_cache) == ("null", False)
    monkeypatch.delenv("DB_POOL")
    monkeypatch.delenv("DB_STATEMENT_CACHE")
    assert (Settings().pool, Settings().statement_cache) == ("queue", True)


async def test_the_default_engine_pools_and_caches_statements(settings: Settings) -> None:
    engine = create_engine(settings.model_copy(update={"pool": "queue", "statement_cache": True}))
    try:
        assert isinstance(engine.pool, AsyncAdaptedQueuePool)
        assert engine.pool.size() == settings.pool_size
        async with engine.connect() as conn:
            mode = (await conn.execute(text("show plan_cache_mode"))).scalar()
            adapter = (await conn.get_raw_connection()).dbapi_connection
            assert adapter._prepared_statement_cache is not None  # type: ignore[union-attr]
            assert (await driver_connection(conn))._stmt_cache.get_max_size() > 0
            prepared = await conn.execute(text("select count(*) from pg_prepared_statements"))
            assert prepared.scalar() >= 1  # named, kept on the server connection
        assert mode == "force_custom_plan"
    finally:
        await engine.dispose()


async def test_null_pool_without_statement_cache_for_pgbouncer(settings: Settings) -> None:
    engine = create_engine(settings.model_copy(update={"pool": "null", "statement_cache": False}))
    try:
        assert isinstance(engine.pool, NullPool)
        async with engine.connect() as conn:
            name = (await conn.execute(text("show application_name"))).scalar()
            adapter = (await conn.get_raw_connection()).dbapi_connection
            assert adapter._prepared_statement_cache is None  # type: ignore[union-attr]
            assert (await driver_connection(conn))._stmt_cache.get_max_size() == 0
            # Only unnamed statements: none is left on the server for another client to meet.
            prepared = await conn.execute(text("select count(*) from pg_prepared_statements"))
            assert prepared.scalar() == 0
        assert name == "etl-worker"
    finally:
        await engine.dispose()
