"""Reading a dataset out of one consistent snapshot, in constant memory.

CSV goes through PostgreSQL's `COPY … TO STDOUT` on the snapshot's own asyncpg connection: the
server formats the rows and the worker only moves bytes.

JSON Lines are rendered by PostgreSQL's `row_to_json`: building the objects in Python ran at half
the server's speed (README, "Measured design choices"). A whole-table export (and an incremental
one, `changes`) goes through COPY too, a range of heap pages per statement, on up to two
connections sharing the snapshot (jobs/exports/pages.py); an export with `since` reads row by
row through a server-side cursor, a bounded batch at a time, so that the planner can use the
index on the `since` column.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Select, Table, Text, and_, func, select, text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from jobs.db import driver_connection
from jobs.exports.pages import SNAPSHOT_ID, jsonl_by_pages
from jobs.exports.xids import Changes
from jobs.registry import Dataset

# Rows per FETCH of the JSON Lines cursor, when it reads row by row (exports with `since`);
# larger fetches were slower and held more (README, "Measured design choices").
BATCH_ROWS = 2_000

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
    sessionmaker: async_sessionmaker[AsyncSession] | None = None
    """Where `session` came from: helpers reading in the same snapshot open theirs there."""


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
        yield Snapshot(
            conn=conn,
            taken_at=taken_at,
            session=session,
            opening=opening,
            sessionmaker=sessionmaker,
        )


def joiner(snap: Snapshot) -> Callable[[str], AbstractAsyncContextManager[AsyncConnection]] | None:
    """Opens a read-only transaction in `snap`'s exported snapshot (by its id) and yields its
    connection, with the same settings as `snap`'s; None when `snap` has no sessionmaker."""
    sessionmaker = snap.sessionmaker
    if sessionmaker is None:
        return None

    @asynccontextmanager
    async def join(snapshot_id: str) -> AsyncIterator[AsyncConnection]:
        assert SNAPSHOT_ID.fullmatch(snapshot_id)  # a literal: SET takes no parameters

        async def adopt(conn: AsyncConnection) -> None:
            await conn.execute(text(f"set transaction snapshot '{snapshot_id}'"))

        async with snapshot(sessionmaker, first=adopt) as helper:
            yield helper.conn

    return join


@dataclass(frozen=True, slots=True)
class KeyRange:
    """The rows whose primary key is at least `lower` and below `upper` (None: unbounded), one
    part of a parallel export (jobs/exports/parallel.py)."""

    lower: object = None
    upper: object = None

    def clause(self, table: Table) -> ColumnElement[bool]:
        (key,) = table.primary_key.columns
        bounds = [] if self.lower is None else [key >= self.lower]
        bounds += [] if self.upper is None else [key < self.upper]
        return and_(True, *bounds)


def rows_query(
    dataset: Dataset,
    *,
    since: datetime | None,
    changes: Changes | None,
    dialect: Dialect,
    key_range: KeyRange | None = None,
) -> Select[tuple[object, ...]]:
    """The dataset's columns, in registry order; with `since`, only rows changed after it; with
    `changes`, only rows written by transactions the previous export did not see; with
    `key_range`, only the rows whose key lies in it."""
    table = dataset.table
    query: Select[tuple[object, ...]] = select(*(table.c[name] for name in dataset.export_columns))
    if since is not None:
        query = query.where(table.c[dataset.since_column] > since)
    if changes is not None:
        query = query.where(changes.clause(table, dialect))
    if key_range is not None:
        query = query.where(key_range.clause(table))
    return query


async def copy_csv(
    snap: Snapshot,
    *,
    dataset: Dataset,
    since: datetime | None,
    changes: Changes | None = None,
    sink: Sink,
    progress: Progress,
    key_range: KeyRange | None = None,
) -> int:
    """Stream the dataset as CSV with a header row into `sink`; returns the number of rows."""
    dialect = snap.conn.dialect
    query = rows_query(dataset, since=since, changes=changes, dialect=dialect, key_range=key_range)
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
    key_range: KeyRange | None = None,
) -> int:
    """Stream the dataset as JSON Lines into `sink`; returns the number of rows.

    One object per row with the column names as keys; timestamps are ISO-8601 in UTC, UUIDs are
    strings, integers are numbers (PostgreSQL's own JSON rendering of each type). A key range
    (one part of a parallel export) is read row by row, through the primary key's index.
    """
    server = snap.conn.dialect.server_version_info or (0,)
    if since is None and key_range is None and server >= (14,):  # TID range scans: PG 14+
        return await jsonl_by_pages(
            snap.conn,
            dataset=dataset,
            changes=changes,
            sink=sink,
            progress=progress,
            join=joiner(snap),
        )
    return await _jsonl_by_rows(
        snap,
        dataset=dataset,
        since=since,
        changes=changes,
        sink=sink,
        progress=progress,
        key_range=key_range,
    )


async def _jsonl_by_rows(
    snap: Snapshot,
    *,
    dataset: Dataset,
    since: datetime | None,
    changes: Changes | None,
    sink: Sink,
    progress: Progress,
    key_range: KeyRange | None = None,
) -> int:
    """One result row per table row; the planner may use the index on the `since` column."""
    rows = rows_query(
        dataset, since=since, changes=changes, dialect=snap.conn.dialect, key_range=key_range
    )
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
