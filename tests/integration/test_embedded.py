"""With no URLs set, embedded servers start once and a second process reuses them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker import embedded
from worker.settings import Settings

PROBE = """
import asyncio, json, sys
import asyncpg, redis.asyncio as aioredis
from worker import embedded
from worker.settings import Settings

settings = embedded.resolve(Settings(DATABASE_URL=None, REDIS_URL=None, ETL_STATE_DIR=sys.argv[1]))

async def main():
    dsn = settings.database_url.replace("postgresql+asyncpg", "postgresql")
    conn = await asyncpg.connect(dsn)
    pid = await conn.fetchval("select pg_postmaster_start_time()::text")
    await conn.close()
    r = aioredis.Redis(unix_socket_path=settings.redis_url.removeprefix("unix://"))
    info = await r.info("server")
    await r.aclose()
    print(json.dumps({"db": settings.database_url, "redis": settings.redis_url,
                      "pg_started": pid, "redis_pid": info["process_id"]}))

asyncio.run(main())
"""


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: pytest resets its root to mode 0700 when any session starts,
    # which would shut out the `pgserver` user the embedded server runs as (when we are root).
    root = Path(tempfile.mkdtemp(prefix="etl-embedded-"))
    root.chmod(0o755)
    yield root / "state"
    embedded.stop(Settings(ETL_STATE_DIR=root / "state"))
    shutil.rmtree(root, ignore_errors=True)


def _probe(state_dir: Path) -> tuple[dict[str, str], str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(state_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_second_process_reuses_the_embedded_servers(state_dir: Path) -> None:
    first, _ = _probe(state_dir)
    second, _ = _probe(state_dir)
    assert first["db"] == f"postgresql+asyncpg://postgres@/postgres?host={state_dir}/pg"
    assert first["redis"] == f"unix://{state_dir}/redis.sock"
    assert second == first  # same URLs, same server start time, same Redis process


def test_stop_stops_both(state_dir: Path) -> None:
    _probe(state_dir)
    stopped = embedded.stop(Settings(ETL_STATE_DIR=state_dir))
    assert sorted(stopped) == ["postgres", "redis"]
    assert not (state_dir / "pg" / "postmaster.pid").exists()
