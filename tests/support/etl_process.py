"""Running the `etl` command as a separate process, the way an operator does."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from arq.connections import ArqRedis
from arq.constants import job_key_prefix

from worker.settings import Settings

ETL = Path(sys.executable).with_name("etl")
_OWN_VARIABLES = ("DATABASE_URL", "REDIS_URL", "ETL_", "LOG_", "DB_")


@dataclass(frozen=True)
class Done:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def base_env(**extra: str) -> dict[str, str]:
    """The environment without any of the service's variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_VARIABLES)}
    env.update(extra)
    return env


def cli_env(settings: Settings, tmp_path: Path, **extra: str) -> dict[str, str]:
    """What a test's `etl` processes see: the test's database, Redis, queue and dirs."""
    assert settings.database_url is not None and settings.redis_url is not None
    return base_env(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        ETL_QUEUE=settings.queue_name,
        ETL_IMPORT_DIR=str(settings.import_dir),
        ETL_EXPORT_DIR=str(settings.export_dir),
        ETL_STATE_DIR=str(tmp_path / "state"),
        ETL_KEEP_RESULT="600",
        ETL_RETRY_BASE="0.05",
        ETL_RETRY_CAP="0.2",
        ETL_SHUTDOWN_GRACE="5",
        LOG_FORMAT="json",
        # The pool the test's own engine uses: NullPool and no statement cache through pgbouncer.
        DB_POOL=settings.pool,
        DB_STATEMENT_CACHE="on" if settings.statement_cache else "off",
        **extra,
    )


async def etl(*args: str, env: dict[str, str], cwd: Path, within: float = 90) -> Done:
    proc = await asyncio.create_subprocess_exec(
        str(ETL),
        *args,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


async def drop_queue(redis: ArqRedis, queue_name: str) -> None:
    """Remove a test's queue and the jobs still in it: the sorted set never expires by itself."""
    ids = await redis.zrange(queue_name, 0, -1)
    await redis.delete(queue_name, *(job_key_prefix + job_id.decode() for job_id in ids))


async def wait_until_key(redis: ArqRedis, key: str, *, present: bool, within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while bool(await redis.exists(key)) != present:
        if loop.time() > deadline:
            raise AssertionError(f"{key} still {'absent' if present else 'present'}")
        await asyncio.sleep(0.1)


def _log_files(cwd: Path) -> tuple[BinaryIO, BinaryIO]:
    return open(cwd / "worker.out", "ab"), open(cwd / "worker.err", "ab")


@contextlib.asynccontextmanager
async def worker_process(
    env: dict[str, str], cwd: Path, *, redis: ArqRedis | None = None, queue: str = ""
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`etl worker` running until the block ends (then SIGTERM, as a process manager does).

    With `redis`, waits for the worker's health key, which it writes once it polls the queue.
    Its output goes to worker.out / worker.err in `cwd`, to read when a test fails.
    """
    stdout, stderr = _log_files(cwd)
    with stdout, stderr:
        proc = await asyncio.create_subprocess_exec(
            str(ETL),
            "worker",
            env=env,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        if redis is not None:
            await wait_until_key(redis, f"{queue}:health-check", present=True, within=60)
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
