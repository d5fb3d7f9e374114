"""The servers `etl` talks to: which ones, whether they answer, and `etl check`.

A failure to reach one becomes one `Unreachable` line naming the server and its URL without the
password, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime

from jobs.errors import EtlError, describe, is_transient, sqlstate_of
from worker import embedded
from worker.cli.exits import EXIT_FAILED, EXIT_OK
from worker.cli.render import err, out
from worker.errors import Unreachable
from worker.keys import health_key
from worker.settings import Settings, redact_url
from worker.workers import WorkerRecord, list_workers

CONNECT_TIMEOUT_S = 10.0


def servers(settings: Settings) -> Settings:
    """Settings pointing at real servers: the configured ones, or the embedded ones."""
    return embedded.resolve(settings)


def redis_only(settings: Settings) -> Settings:
    # Commands that only read or write Redis need no database: with REDIS_URL set, nothing is
    # started; without it, the embedded servers are (they live and die together).
    return settings if settings.redis_url else embedded.resolve(settings)


def _connection_problem(exc: BaseException) -> bool:
    import redis.exceptions

    if is_transient(exc) or isinstance(exc, OSError | TimeoutError):
        return True
    code = sqlstate_of(exc)
    # 28xxx: bad user or password; 3D000: no such database; 08P01: a startup parameter refused.
    if code is not None and (code.startswith("28") or code in ("3D000", "08P01")):
        return True
    return isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.ResponseError)


def what_failed(exc: BaseException) -> str:
    """Why a server could not be reached, in one line."""
    if isinstance(exc, TimeoutError) and not str(exc).strip() and exc.__cause__ is None:
        return f"no answer within {CONNECT_TIMEOUT_S:g} s"
    if "unsupported startup parameter" in str(exc):
        # pgbouncer refuses plan_cache_mode, which only a statement cache needs.
        return f"{describe(exc)} (through pgbouncer, set DB_STATEMENT_CACHE=off and DB_POOL=null)"
    return describe(exc)


@contextlib.contextmanager
def reaching(server: str, url: str | None) -> Iterator[None]:
    """Turn a failure to reach `server` into one Unreachable line (URL without its password)."""
    try:
        yield
    except EtlError:
        raise
    except Exception as exc:
        if isinstance(exc, ConnectionError) and str(exc).startswith("cannot reach"):
            raise Unreachable(str(exc)) from None  # worker.redis.connect said it already
        if _connection_problem(exc):
            where = redact_url(url) if url else "(no URL)"
            raise Unreachable(f"cannot reach {server} at {where}: {what_failed(exc)}") from None
        raise


async def ping_database(settings: Settings) -> None:
    from sqlalchemy import text

    from worker.db import create_engine

    with reaching("PostgreSQL", settings.database_url):
        engine = create_engine(settings)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S), engine.connect() as conn:
                await conn.execute(text("select 1"))
        finally:
            await engine.dispose()


async def ping_redis(settings: Settings) -> None:
    from worker.redis import connect

    with reaching("Redis", settings.redis_url):
        async with asyncio.timeout(CONNECT_TIMEOUT_S * 2):
            redis = await connect(settings)
            try:
                await redis.ping()
            finally:
                await redis.aclose()


async def preflight(settings: Settings) -> None:
    """Unreachable unless both servers answer."""
    await ping_redis(settings)
    await ping_database(settings)


async def worker_health(settings: Settings) -> tuple[str | None, list[WorkerRecord]]:
    """The health line a live worker of the queue keeps fresh in Redis (None without one), and
    the worker registry's records."""
    from worker.redis import connect

    with reaching("Redis", settings.redis_url):
        async with asyncio.timeout(CONNECT_TIMEOUT_S * 2):
            redis = await connect(settings)
            try:
                raw = await redis.get(health_key(settings.queue_name))
                workers = await list_workers(redis, queue_name=settings.queue_name)
            finally:
                await redis.aclose()
    return (None if raw is None else raw.decode(errors="replace")), workers


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"


def worker_lines(workers: list[WorkerRecord], *, now: datetime) -> list[str]:
    """One line per registered worker process, stale ones said so."""
    lines = []
    for w in workers:
        beat = (now - w.heartbeat_at).total_seconds()
        name = f"worker {w.host} pid {w.pid}"
        if w.stale:
            when = w.heartbeat_at.isoformat(timespec="seconds")
            lines.append(f"{name}: stale, last heartbeat {when} ({_ago(beat)})")
        else:
            since = w.started_at.isoformat(timespec="seconds")
            lines.append(
                f"{name}: {len(w.running)}/{w.max_jobs} jobs running, up since {since}, "
                f"heartbeat {_ago(beat)}"
            )
    return lines


async def check(settings: Settings) -> tuple[list[str], str, list[WorkerRecord]]:
    """What is wrong (nothing, when all is well), the worker's health line, the registry."""
    problems: list[str] = []
    try:
        await ping_database(settings)
    except Unreachable as exc:
        problems.append(exc.message)
    health = ""
    workers: list[WorkerRecord] = []
    try:
        line, workers = await worker_health(settings)
    except Unreachable as exc:
        problems.append(exc.message)
    else:
        if line is None:
            key = health_key(settings.queue_name)
            problems.append(
                f"no worker is running on queue {settings.queue_name!r} "
                f"(no fresh health key {key!r}; start one with `etl worker`)"
            )
        else:
            health = line
    return problems, health, workers


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    settings = servers(settings)
    problems, health, workers = asyncio.run(check(settings))
    if problems:
        for problem in problems:
            err(f"check failed: {problem}")
        return EXIT_FAILED
    out(f"ok: PostgreSQL and Redis answer; worker on queue {settings.queue_name!r}: {health}")
    for line in worker_lines(workers, now=datetime.now(UTC)):
        out(line)
    return EXIT_OK
