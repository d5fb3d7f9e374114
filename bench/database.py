"""The benchmark's own database: created on the server, migrated by Alembic, dropped at the end.

A database is only ever dropped when the benchmark made it (it carries the benchmark's comment),
so `--database` pointed at real data fails instead of destroying it.
"""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
from alembic.config import Config
from sqlalchemy.engine import make_url

from alembic import command
from bench.harness import BenchError
from worker.settings import normalise_database_url

ROOT = Path(__file__).resolve().parent.parent
MARK = "etl-worker benchmark scratch database; dropped by python -m bench"
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
TABLES = ("transfers", "accounts", "customers", "import_rejects", "import_runs")


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise BenchError(
            f"--database {name[:80]!r}: use lower-case letters, digits and _ (at most 63)"
        )
    return name


def asyncpg_dsn(url: str) -> str:
    """asyncpg's DSN for a SQLAlchemy URL (a unix-socket server keeps its ?host=)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def database_url(server_url: str, name: str) -> str:
    """The server's URL with the database swapped for `name`, in the service's asyncpg form."""
    other = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    return normalise_database_url(other)


async def _admin(server_url: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(asyncpg_dsn(server_url))
    except (OSError, asyncpg.PostgresError) as exc:
        raise BenchError(f"cannot reach PostgreSQL: {type(exc).__name__}: {exc}") from None


async def _is_ours(conn: asyncpg.Connection, name: str) -> bool | None:
    """None when there is no such database; else whether the benchmark made it."""
    row = await conn.fetchrow(
        "select shobj_description(oid, 'pg_database') as note from pg_database where datname = $1",
        name,
    )
    if row is None:
        return None
    return bool(row["note"] == MARK)


async def recreate(server_url: str, name: str) -> None:
    """An empty database `name`: a leftover from an earlier run is dropped, anything else kept."""
    conn = await _admin(server_url)
    try:
        ours = await _is_ours(conn, name)
        if ours is False:
            raise BenchError(
                f"database {name!r} exists and was not made by the benchmark; "
                "pick another name with --database"
            )
        if ours:
            await conn.execute(f'drop database "{name}" with (force)')
        await conn.execute(f'create database "{name}"')
        await conn.execute(f"comment on database \"{name}\" is '{MARK}'")
    finally:
        await conn.close()


async def drop(server_url: str, name: str) -> None:
    conn = await _admin(server_url)
    try:
        if await _is_ours(conn, name):
            await conn.execute(f'drop database "{name}" with (force)')
    finally:
        await conn.close()


def migrate(url: str) -> None:
    """alembic upgrade head on `url`. Alembic's env runs its own event loop: call from a thread."""
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    command.upgrade(config, "head")


async def execute(url: str, *statements: str) -> None:
    """Run statements one by one, each committed (VACUUM and ANALYZE need that)."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def fetchval(url: str, query: str) -> object:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


def truncate_all() -> str:
    return f"truncate {', '.join(TABLES)} restart identity cascade"
