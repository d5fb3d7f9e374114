"""The service behind pgbouncer in transaction mode: what works, and what is refused, clearly.

The job tests themselves run through pgbouncer with TEST_VIA_PGBOUNCER=1 (`.ci/run` does so).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import pgbouncer
from tests.support.etl_process import base_env, etl
from worker.db import create_engine, create_sessionmaker
from worker.settings import Settings

pytestmark = pytest.mark.skipif(
    shutil.which("pgbouncer") is None and not Path("/usr/sbin/pgbouncer").exists(),
    reason="pgbouncer is not installed (.ci/run installs it)",
)
SERVER_CONNECTIONS = 3


@pytest.fixture(scope="module")
def bouncer_url(database_url: str) -> Iterator[str]:
    """This session's database through a pgbouncer of its own, with few server connections."""
    with pgbouncer.pgbouncer_in_front(database_url, pool_size=SERVER_CONNECTIONS) as url:
        yield url


def _through(settings: Settings, url: str, **update: object) -> Settings:
    return settings.model_copy(update={"database_url": url, **update})


@pytest.mark.skipif(not pgbouncer.ENABLED, reason="only with TEST_VIA_PGBOUNCER=1")
def test_the_test_engine_and_jobs_go_through_pgbouncer(
    settings: Settings, engine: AsyncEngine, database_url: str
) -> None:
    assert settings.database_url is not None
    assert make_url(settings.database_url).port != make_url(database_url).port
    assert engine.url.port == make_url(settings.database_url).port
    assert (settings.pool, settings.statement_cache) == ("null", False)


async def _unit_of_work(engine: AsyncEngine, worker: int, round_: int) -> tuple[int, int]:
    """What jobs do in one transaction: parameters, a transaction-level advisory lock, a temp
    table dropped at commit, SET LOCAL. Returns (server pid, a computed number)."""
    async with create_sessionmaker(engine)() as session, session.begin():
        pid = (await session.execute(text("select pg_backend_pid()"))).scalar_one()
        await session.execute(text("set local work_mem = '8MB'"))
        await session.execute(text("select pg_advisory_xact_lock(:key)"), {"key": worker})
        await session.execute(
            text("create temp table stage (n int) on commit drop"),
        )
        await session.execute(
            text("insert into stage select generate_series(1, :n)"), {"n": worker + round_}
        )
        total = (await session.execute(text("select sum(n) from stage"))).scalar_one()
        assert (await session.execute(text("show work_mem"))).scalar_one() == "8MB"
    return int(pid), int(total)


async def test_many_clients_share_few_server_connections_with_the_pgbouncer_settings(
    settings: Settings, bouncer_url: str
) -> None:
    engine = create_engine(_through(settings, bouncer_url, pool="null", statement_cache=False))
    try:
        results = await asyncio.gather(
            *(_unit_of_work(engine, w, r) for w in range(1, 13) for r in range(8))
        )
    finally:
        await engine.dispose()
    expected = [(w + r) * (w + r + 1) // 2 for w in range(1, 13) for r in range(8)]
    assert [total for _, total in results] == expected
    # 96 transactions of 12 clients at once ran on at most 3 server connections: pgbouncer
    # handed each one to another client between transactions, and nothing leaked across.
    assert len({pid for pid, _ in results}) <= SERVER_CONNECTIONS


async def test_the_default_settings_are_refused_through_pgbouncer_in_one_line(
    settings: Settings, bouncer_url: str, tmp_path: Path
) -> None:
    assert settings.redis_url is not None
    env = base_env(
        DATABASE_URL=bouncer_url,
        REDIS_URL=settings.redis_url,
        ETL_QUEUE=settings.queue_name,
        ETL_STATE_DIR=str(tmp_path / "state"),
        LOG_FORMAT="json",
    )
    done = await etl("worker", "--burst", env=env, cwd=tmp_path)
    assert done.code == 1, done.output
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("etl: cannot reach PostgreSQL at "), last
    assert last.endswith(
        "unsupported startup parameter: plan_cache_mode "
        "(through pgbouncer, set DB_STATEMENT_CACHE=off and DB_POOL=null)"
    ), last
