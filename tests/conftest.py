"""Shared fixtures: a real PostgreSQL database built by the Alembic migrations, Redis, a real ctx.

The database is `TEST_DATABASE_URL`'s server when set, else an embedded one; each test session
creates its own database there (so parallel runs never meet) and drops it at the end. Jobs commit
for real, so each test starts from empty tables (TRUNCATE) rather than from a rolled-back
transaction: that lets tests check atomicity from a second connection.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import pgbouncer
from tests.support.database import ROOT, TABLES, asyncpg_dsn, migrate
from tests.support.session_servers import session_servers
from worker.context import CTX_KEY, AppContext
from worker.db import create_engine, create_sessionmaker
from worker.logging import configure_logging
from worker.redis import connect
from worker.settings import Settings, normalise_database_url


@pytest.fixture(scope="session")
def server_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Where the test servers are: TEST_DATABASE_URL / TEST_REDIS_URL, or embedded ones (stopped
    at the end when the test sessions started them: tests/support/session_servers.py)."""
    state = Path(os.environ.get("TEST_ETL_STATE_DIR", ROOT / ".etl-test"))
    base = Settings(
        DATABASE_URL=os.environ.get("TEST_DATABASE_URL") or None,
        REDIS_URL=os.environ.get("TEST_REDIS_URL") or None,
        ETL_STATE_DIR=state,
    )
    with session_servers(base) as settings:
        yield settings


@pytest.fixture(scope="session")
def database_url(server_settings: Settings) -> Iterator[str]:
    """A fresh database for this test session, migrated to head by Alembic."""
    assert server_settings.database_url is not None
    admin = asyncpg_dsn(server_settings.database_url)
    name = f"etl_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def admin_exec(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin_exec(f'create database "{name}"'))
    url = normalise_database_url(
        make_url(server_settings.database_url).set(database=name).render_as_string(False)
    )
    migrate(url, "head")
    yield url
    asyncio.run(admin_exec(f'drop database if exists "{name}" with (force)'))


# Through pgbouncer in transaction mode (TEST_VIA_PGBOUNCER=1), jobs and tests run as the service
# must there: a connection per unit of work, no statement cache.
THROUGH_PGBOUNCER = {"pool": "null", "statement_cache": False} if pgbouncer.ENABLED else {}


@pytest.fixture(scope="session")
def jobs_database_url(database_url: str) -> Iterator[str]:
    """Where the engine and jobs reach the test database: directly, or through pgbouncer."""
    if not pgbouncer.ENABLED:
        yield database_url
        return
    with pgbouncer.pgbouncer_in_front(database_url) as url:
        yield url


@pytest.fixture
def settings(server_settings: Settings, jobs_database_url: str, tmp_path: Path) -> Settings:
    """Settings for one test: its own dirs and its own queue name."""
    (tmp_path / "inbox").mkdir()
    return server_settings.model_copy(
        update={
            **THROUGH_PGBOUNCER,
            "database_url": jobs_database_url,
            "import_dir": tmp_path / "inbox",
            "export_dir": tmp_path / "exports",
            "queue_name": f"etl:test:{uuid.uuid4().hex}",
            "retry_base_s": 0.05,
            "retry_cap_s": 0.2,
        }
    )


@pytest.fixture(scope="session")
async def engine(jobs_database_url: str, server_settings: Settings) -> AsyncIterator[AsyncEngine]:
    update = {**THROUGH_PGBOUNCER, "database_url": jobs_database_url}
    engine = create_engine(server_settings.model_copy(update=update))
    yield engine
    await engine.dispose()


@pytest.fixture
async def clean_db(engine: AsyncEngine) -> AsyncIterator[None]:
    async with engine.begin() as conn:
        await conn.execute(text(f"truncate {', '.join(TABLES)} restart identity cascade"))
    yield


@pytest.fixture
def app(settings: Settings, engine: AsyncEngine, clean_db: None) -> AppContext:
    return AppContext(settings=settings, engine=engine, sessionmaker=create_sessionmaker(engine))


@pytest.fixture
def ctx(app: AppContext) -> dict[str, Any]:
    """arq's ctx as the worker builds it, for calling a job's `run` directly."""
    return {CTX_KEY: app, "job_id": f"test-{uuid.uuid4().hex[:8]}", "job_try": 1}


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[ArqRedis]:
    """The real Redis (JSON job format), with this test's queue name."""
    pool = await connect(settings)
    yield pool
    await pool.aclose()


@pytest.fixture(autouse=True, scope="session")
def _logging() -> Iterator[None]:
    configure_logging("INFO", "json")
    yield
    # pytest closes its capture streams before atexit hooks run (pgserver logs from one): point
    # logging at the real stderr so those late lines don't fail with "I/O operation on closed file".
    configure_logging("WARNING", "json", stream=sys.__stderr__)
