"""Reading a dataset out of one consistent snapshot, in constant memory.

CSV goes through PostgreSQL's `COPY … TO STDOUT` on the snapshot's own asyncpg connection: the
server formats the rows and the worker only moves bytes. JSON Lines goes through
`AsyncConnection.stream()` with `yield_per`, a server-side cursor read a batch at a time; each row
is rendered by `row_to_json` in the same query. Measured on 1M customers rows, building the objects
in Python (decode the row, format timestamps, `json.dumps`) ran at 130 to 190k rows/s, while taking
the server's JSON text ran at about 375k rows/s, in the same constant memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, Text, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from jobs.registry import Dataset
from worker.db import driver_connection

# Rows per FETCH of the JSON Lines cursor. Measured on 1M rows: 1,000 and 2,000 were fastest
# (smaller fetches overlap better with the server producing the next ones); 10,000 was 30% slower
# and held more memory.
BATCH_ROWS = 2_000

Sink = Callable[[bytes], Awaitable[None]]
Progress = Callable[[int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A REPEATABLE READ, READ ONLY transaction: every query in it sees the same committed data."""

    conn: AsyncConnection
    taken_at: datetime
    """The database clock when the snapshot was taken (UTC)."""


@asynccontextmanager
async def snapshot(engine: AsyncEngine) -> AsyncIterator[Snapshot]:
    """One consistent, read-only view of the database for as long as the block runs."""
    async with engine.connect() as conn:
        conn = await conn.execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        )
        async with conn.begin():
            # COPY and row_to_json format timestamps in the session's zone: make every export
            # say UTC whatever the server's default. SET takes no snapshot; the SELECT below does.
            await conn.execute(text("set local timezone = 'UTC'"))
            taken_at = (await conn.execute(select(func.clock_timestamp()))).scalar_one()
            yield Snapshot(conn=conn, taken_at=taken_at)


def rows_query(dataset: Dataset, *, since: datetime | None) -> Select[tuple[object, ...]]:
    """The dataset's columns, in registry order; with `since`, only rows changed after it."""
    table = dataset.table
    query: Select[tuple[object, ...]] = select(*(table.c[name] for name in dataset.export_columns))
    if since is not None:
        query = query.where(table.c[dataset.since_column] > since)
    return query


async def copy_csv(
    snap: Snapshot,
    *,
    dataset: Dataset,
    since: datetime | None,
    sink: Sink,
    progress: Progress,
) -> int:
    """Stream the dataset as CSV with a header row into `sink`; returns the number of rows."""
    compiled = rows_query(dataset, since=since).compile(dialect=snap.conn.dialect)
    args = [compiled.params[name] for name in compiled.positiontup or ()]
    driver = await driver_connection(snap.conn)
    lines = 0

    async def receive(chunk: bytes) -> None:
        nonlocal lines
        await sink(chunk)
        # Newlines count rows exactly unless a value holds one; this is only for progress.
        lines += chunk.count(b"\n")
        await progress(max(lines - 1, 0))

    try:
        # asyncpg inlines `args` as literals quoted by the server itself (quote_literal).
        status = await driver.copy_from_query(
            str(compiled), *args, output=receive, format="csv", header=True
        )
    except BaseException:
        # When the sink fails (or the job is cancelled), asyncpg stops the COPY with a cancel
        # request. If the server had already sent the last row, nothing answers that request
        # and asyncpg 0.32 waits for it forever on the connection's next use (a one-chunk
        # export whose sink failed hung its rollback). Close the connection instead of reusing it.
        await snap.conn.invalidate()
        raise
    return _copy_rows(status)


def _copy_rows(status: str) -> int:
    """The row count of a `COPY n` command tag."""
    word, _, count = status.partition(" ")
    if word != "COPY" or not count.isdigit():
        raise RuntimeError(f"unexpected COPY status {status!r}")
    return int(count)


async def stream_jsonl(
    snap: Snapshot,
    *,
    dataset: Dataset,
    since: datetime | None,
    sink: Sink,
    progress: Progress,
) -> int:
    """Stream the dataset as JSON Lines into `sink`; returns the number of rows.

    One object per row with the column names as keys; timestamps are ISO-8601 in UTC, UUIDs are
    strings, integers are numbers (PostgreSQL's own JSON rendering of each type).
    """
    rows = rows_query(dataset, since=since).subquery("r")
    query = select(func.row_to_json(rows.table_valued()).cast(Text))
    result = await snap.conn.stream(query.execution_options(yield_per=BATCH_ROWS))
    count = 0
    async for batch in result.scalars().partitions():
        lines: list[str] = list(batch)
        lines.append("")  # a newline after the last line too
        await sink("\n".join(lines).encode())
        count += len(batch)
        await progress(count)
    return count
