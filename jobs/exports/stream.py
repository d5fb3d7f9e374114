"""Reading a dataset out of one consistent snapshot, in constant memory.

CSV goes through PostgreSQL's `COPY … TO STDOUT` on the snapshot's own asyncpg connection: the
server formats the rows and the worker only moves bytes.

JSON Lines goes through `AsyncConnection.stream()`, a server-side cursor read a bounded batch at a
time, and each row is rendered by PostgreSQL's `row_to_json`: building the objects in Python ran
at half the server's speed (README, "Measured design choices"). A whole-table export goes
further and fetches the JSON a few heap pages per result row (`pages_query`), which cut
SQLAlchemy's per-row cost out; an export with `since` reads row by row, so that the planner can
use the index on the `since` column. An incremental export (`changes`) reads by pages too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, Text, TextClause, func, select, text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from jobs.db import driver_connection
from jobs.exports.xids import Changes
from jobs.registry import Dataset

# Rows per FETCH of the JSON Lines cursor, when it reads row by row (exports with `since`);
# larger fetches were slower and held more (README, "Measured design choices").
BATCH_ROWS = 2_000
# Whole-table JSON Lines exports fetch chunks of this many heap pages (about 150 customers rows,
# 55 KB of JSON), this many chunks per FETCH: SQLAlchemy's asyncpg cursor fetches at least 50
# result rows at a time anyway. More pages per chunk ran no faster and held more memory.
CHUNK_PAGES = 4
CHUNKS_PER_FETCH = 50

Sink = Callable[[bytes], Awaitable[None]]
First = Callable[[AsyncConnection], Awaitable[object]]
Progress = Callable[[int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A REPEATABLE READ transaction: every query in it sees the same committed data."""

    conn: AsyncConnection
    taken_at: datetime
    """The database clock when the snapshot was taken (UTC)."""
    session: AsyncSession
    """The session whose transaction this is, for ORM queries (`conn` is its connection)."""
    opening: object = None
    """What `first` returned, if given."""


@asynccontextmanager
async def snapshot(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    read_only: bool = True,
    first: First | None = None,
) -> AsyncIterator[Snapshot]:
    """One consistent view of the database for as long as the block runs, committed at its end.

    Read-only unless asked: an incremental export writes its feed's cursor in the same
    transaction. `first` runs as the transaction's first statement, the one that takes the
    snapshot (an incremental export reads the snapshot's transaction ids there).
    """
    async with sessionmaker() as session, session.begin():
        options = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": read_only}
        conn = await session.connection(execution_options=options)
        # COPY and row_to_json format timestamps in the session's zone: make every export say
        # UTC whatever the server's default. SET takes no snapshot; the next statement does.
        await conn.execute(text("set local timezone = 'UTC'"))
        opening = None if first is None else await first(conn)
        taken_at = (await conn.execute(select(func.clock_timestamp()))).scalar_one()
        yield Snapshot(conn=conn, taken_at=taken_at, session=session, opening=opening)


def rows_query(
    dataset: Dataset, *, since: datetime | None, changes: Changes | None, dialect: Dialect
) -> Select[tuple[object, ...]]:
    """The dataset's columns, in registry order; with `since`, only rows changed after it; with
    `changes`, only rows written by transactions the previous export did not see."""
    table = dataset.table
    query: Select[tuple[object, ...]] = select(*(table.c[name] for name in dataset.export_columns))
    if since is not None:
        query = query.where(table.c[dataset.since_column] > since)
    if changes is not None:
        query = query.where(changes.clause(table, dialect))
    return query


async def copy_csv(
    snap: Snapshot,
    *,
    dataset: Dataset,
    since: datetime | None,
    changes: Changes | None = None,
    sink: Sink,
    progress: Progress,
) -> int:
    """Stream the dataset as CSV with a header row into `sink`; returns the number of rows."""
    dialect = snap.conn.dialect
    query = rows_query(dataset, since=since, changes=changes, dialect=dialect)
    compiled = query.compile(dialect=dialect)
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
    changes: Changes | None = None,
    sink: Sink,
    progress: Progress,
) -> int:
    """Stream the dataset as JSON Lines into `sink`; returns the number of rows.

    One object per row with the column names as keys; timestamps are ISO-8601 in UTC, UUIDs are
    strings, integers are numbers (PostgreSQL's own JSON rendering of each type).
    """
    server = snap.conn.dialect.server_version_info or (0,)
    if since is None and server >= (14,):  # TID range scans came with PostgreSQL 14
        return await _jsonl_by_pages(
            snap, dataset=dataset, changes=changes, sink=sink, progress=progress
        )
    return await _jsonl_by_rows(
        snap, dataset=dataset, since=since, changes=changes, sink=sink, progress=progress
    )


async def _jsonl_by_rows(
    snap: Snapshot,
    *,
    dataset: Dataset,
    since: datetime | None,
    changes: Changes | None,
    sink: Sink,
    progress: Progress,
) -> int:
    """One result row per table row; the planner may use the index on the `since` column."""
    rows = rows_query(dataset, since=since, changes=changes, dialect=snap.conn.dialect)
    table = rows.subquery("r")
    query = select(func.row_to_json(table.table_valued()).cast(Text))
    result = await snap.conn.stream(query.execution_options(yield_per=BATCH_ROWS))
    count = 0
    async for batch in result.scalars().partitions():
        lines: list[str] = list(batch)
        lines.append("")  # a newline after the last line too
        await sink("\n".join(lines).encode())
        count += len(batch)
        await progress(count)
    return count


def pages_query(
    dataset: Dataset, *, pages: int, dialect: Dialect, changes: Changes | None = None
) -> TextClause:
    """The whole table (or its `changes`) as chunks of JSON Lines, one result row per `pages`
    heap pages.

    Each chunk reads its pages with a TID range scan, so together the chunks read the table once,
    in its physical order as a plain scan would. The page count is read inside the snapshot: a
    row the snapshot sees lies in a page that existed when it was taken, and tables only grow
    while a snapshot that could see a row is open (VACUUM truncates only empty trailing pages).
    """
    quote = dialect.identifier_preparer.quote
    table = quote(dataset.table.name)
    columns = ", ".join(quote(name) for name in dataset.export_columns)
    regclass = "'" + table.replace("'", "''") + "'::regclass"
    # The plain export's query stays exactly as it was: no condition at all.
    where, params = ("", {}) if changes is None else changes.sql(table)
    return text(
        f"""
        select chunk.rows, chunk.lines
        from generate_series(
            0, pg_relation_size({regclass}) / current_setting('block_size')::int, {int(pages)}
        ) as b
        cross join lateral (
            select count(*) as rows, string_agg(row_to_json(r)::text, E'\\n') as lines
            from (
                select {columns} from {table}
                where ctid >= format('(%s,0)', b)::tid
                  and ctid < format('(%s,0)', b + {int(pages)})::tid
                  {"and " + where if where else ""}
            ) as r
        ) as chunk
        where chunk.rows > 0
        """
    ).bindparams(**params)


async def _jsonl_by_pages(
    snap: Snapshot, *, dataset: Dataset, changes: Changes | None, sink: Sink, progress: Progress
) -> int:
    """A whole-table export with one result row per few hundred table rows.

    Measured on 1M customers rows, SQLAlchemy's handling of each result row (the adapter's
    buffer, the Row) cost as much as PostgreSQL rendering the JSON: the same export ran in about
    two thirds of the time with the rows fetched in chunks.
    """
    query = pages_query(dataset, pages=CHUNK_PAGES, dialect=snap.conn.dialect, changes=changes)
    # text() with yield_per was measured buffering the whole result; stream_results with a
    # bounded buffer does stream.
    result = await snap.conn.stream(
        query.execution_options(stream_results=True, max_row_buffer=CHUNKS_PER_FETCH)
    )
    count = 0
    async for batch in result.partitions(CHUNKS_PER_FETCH):
        for rows, lines in batch:
            await sink(lines.encode() + b"\n")
            count += rows
        await progress(count)
    return count
