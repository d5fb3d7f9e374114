"""`etl migrate` while the service runs: a long transaction makes it give up, not wait."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from tests.support.database import ROOT, asyncpg_dsn, head_revision, migrate
from tests.support.etl_process import base_env, etl
from tests.support.pgbouncer import pgbouncer_in_front
from worker.settings import Settings, normalise_database_url

pytestmark = pytest.mark.timeout(180)
PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
)

NEW = "ix_import_rejects_import_id_line_number"
OLD = "ix_import_rejects_import_id"
REJECT = (
    "insert into import_rejects (import_id, dataset, file, line_number, reason, raw_line)"
    " values ($1, 'customers', 'c.csv', $2, 'email: not an e-mail address', 'x')"
)


@pytest.fixture
async def fresh_url(server_settings: Settings) -> AsyncIterator[str]:
    """A database of its own, dropped at the end."""
    assert server_settings.database_url is not None
    admin = asyncpg_dsn(server_settings.database_url)
    name = f"etl_online_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'create database "{name}"')
        yield normalise_database_url(make_url(admin).set(database=name).render_as_string(False))
        await conn.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await conn.close()


def _before_0004() -> str:
    script = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
    down = script.get_revision("0004").down_revision
    assert isinstance(down, str)
    return down


async def _index_state(conn: asyncpg.Connection, name: str) -> bool | None:
    """True: valid; False: left invalid; None: no such index."""
    valid: bool | None = await conn.fetchval(
        "select indisvalid from pg_index where indexrelid = to_regclass($1)", name
    )
    return valid


def _env(database_url: str, server_settings: Settings, tmp_path: Path) -> dict[str, str]:
    assert server_settings.redis_url is not None
    return base_env(
        DATABASE_URL=database_url,
        REDIS_URL=server_settings.redis_url,
        ETL_STATE_DIR=str(tmp_path / "state"),
        ETL_MIGRATION_LOCK_TIMEOUT="1",
        ETL_MIGRATION_STATEMENT_TIMEOUT="120",
        LOG_LEVEL="WARNING",
        LOG_FORMAT="json",
    )


async def test_a_migration_blocked_by_a_long_transaction_gives_up_in_one_line_and_harms_nothing(
    fresh_url: str, server_settings: Settings, tmp_path: Path
) -> None:
    before = _before_0004()
    await asyncio.to_thread(migrate, fresh_url, before)
    env = _env(fresh_url, server_settings, tmp_path)
    import_id = uuid.uuid4()
    holder = await asyncpg.connect(asyncpg_dsn(fresh_url))
    observer = await asyncpg.connect(asyncpg_dsn(fresh_url))
    try:
        # An import in progress: its transaction has written a reject and not committed yet.
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute(REJECT, import_id, 2)

        started = time.monotonic()
        blocked = await etl("migrate", env=env, cwd=tmp_path)
        took = time.monotonic() - started

        assert blocked.code == 1, blocked.output
        assert blocked.stdout == ""
        [line] = blocked.stderr.splitlines()
        assert re.fullmatch(
            rf"etl: migration 0004 could not take a lock on import_rejects within 1 s "
            rf"\(a long transaction holds it\); the database stays at revision {before}, "
            rf"its unfinished index {NEW} left invalid and unused until the retry rebuilds it; "
            r"retry when it ends",
            line,
        ), line
        assert took < 60, f"gave up after {took:.1f} s: the lock timeout did not end the wait"

        # The import goes on and commits what it wrote, before and after.
        await holder.execute(REJECT, import_id, 3)
        await transaction.commit()
        lines = await observer.fetch(
            "select line_number from import_rejects where import_id = $1 order by 1", import_id
        )
        assert [row["line_number"] for row in lines] == [2, 3]
        assert await observer.fetchval("select version_num from alembic_version") == before
        assert await _index_state(observer, OLD) is True
        assert await _index_state(observer, NEW) in (False, None)

        # Once the transaction has ended, the retry finishes the work.
        retried = await etl("migrate", env=env, cwd=tmp_path)
        assert retried.code == 0, retried.output
        assert await observer.fetchval("select version_num from alembic_version") == (
            head_revision()
        )
        assert await _index_state(observer, NEW) is True
        assert await _index_state(observer, OLD) is None
    finally:
        await holder.close()
        await observer.close()


@pytest.mark.skipif(PGBOUNCER is None, reason="pgbouncer is not installed (.ci/run installs it)")
async def test_migrating_through_pgbouncer_is_refused_before_anything_runs(
    fresh_url: str, server_settings: Settings, tmp_path: Path
) -> None:
    with pgbouncer_in_front(fresh_url) as through:
        refused = await etl("migrate", env=_env(through, server_settings, tmp_path), cwd=tmp_path)
    assert refused.code == 2, refused.output
    assert refused.stderr.splitlines() == [
        "etl: migrations need a direct connection to PostgreSQL: the server at DATABASE_URL "
        "refused their session settings (lock_timeout, statement_timeout), as pgbouncer does; "
        "point DATABASE_URL at PostgreSQL itself to migrate"
    ]
    conn = await asyncpg.connect(asyncpg_dsn(fresh_url))
    try:
        assert await conn.fetchval("select to_regclass('alembic_version')") is None
    finally:
        await conn.close()
