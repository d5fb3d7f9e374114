"""Whole-table JSON Lines: the table read in ranges of heap pages, by one or more connections
sharing the export's snapshot, the lines written in the table's physical order.

PostgreSQL renders each row (`row_to_json`) and joins the lines of every `CHUNK_PAGES` pages into
one value (`string_agg`); `COPY … TO STDOUT (FORMAT binary)` carries those values as they are (the
text and CSV formats would escape or quote them), so the worker only moves bytes, a few large
values per statement. Rendering JSON costs the server two to three times what CSV does, and on
one connection that was the export's limit (README, "Measured design choices"), so the pages are
cut into segments of `SEGMENT_PAGES`, one COPY each, and up to `READERS` connections read them at
once: the snapshot's own, and helpers that import its snapshot (`pg_export_snapshot()` there,
`SET TRANSACTION SNAPSHOT` in a REPEATABLE READ READ ONLY transaction of the same sessionmaker).
Each reader claims the next segment not yet claimed; a segment read ahead of its turn waits in
memory until the ones before it are written, so the file is byte for byte what one reader writes
(every segment's lines in page order, the segments in order). At most `READERS + 1` segments are
claimed and not yet written, so memory stays bounded whatever the table's size.

Helpers are best effort: a helper that cannot start (no connection to be had, the snapshot not
importable, a lock it cannot take at once) reads nothing and the others read everything; one
still waiting for its connection when the last segment is written is cancelled. Once a helper
has claimed a segment, its failure fails the export. A helper takes its table's lock with NOWAIT
at the start, as `pg_dump -j` does: were an `ACCESS EXCLUSIVE` request queued behind the
snapshot's own lock, a helper waiting behind it would wait forever for a snapshot that waits for
the helper's segment. Through pgbouncer in transaction mode a helper is one more transaction and
server connection; the snapshot it imports stays valid while the exporting transaction is open.

Each segment's rows are chosen with a TID range scan, read in physical order as a plain scan
would; no segment is large enough for a parallel plan (whose Gather would mix the order). The
page count is read inside the snapshot: a row the snapshot sees lies in a page that existed when
it was taken, and tables only grow while a snapshot that could see a row is open (VACUUM
truncates only empty trailing pages). Reading the size locks the table (ACCESS SHARE) until the
transaction ends, so it cannot be rewritten under the export.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.db import driver_connection
from jobs.exports.xids import Changes
from jobs.registry import Dataset

# Connections reading one export at once: the snapshot's own and READERS - 1 helpers (1: none).
# Two use both of a two-core server's cores; each helper holds one more pool connection.
READERS = 2
# Heap pages per COPY statement (about 2 MB of customers JSON): what a reader holds while it
# waits for its turn. A table this small or smaller is read by one reader.
SEGMENT_PAGES = 128
# Heap pages per value inside a segment (one string_agg of their lines): the server joined these
# small texts faster than one text per segment (README, "Measured design choices").
CHUNK_PAGES = 4
SNAPSHOT_ID = re.compile(r"[0-9A-F]{8}-[0-9A-F]{8}-[0-9]+")
_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"

Sink = Callable[[bytes], Awaitable[None]]
Progress = Callable[[int], Awaitable[None]]
Join = Callable[[str], AbstractAsyncContextManager[AsyncConnection]]
"""Opens a helper transaction in the exported snapshot (by its id); yields its connection."""


@dataclass(frozen=True, slots=True)
class PagesQuery:
    """The statement reading a range of heap pages as JSON text, `CHUNK_PAGES` pages a value."""

    columns: str
    table: str
    condition: str
    """` and …` with the `changes` condition, or nothing (the plain export's has none)."""

    def __call__(self, first: int, end: int) -> str:
        """Pages `first` to `end` - 1, a value per chunk of pages that holds a row."""
        chunk, end = int(CHUNK_PAGES), int(end)
        return (
            f"select chunk.lines from generate_series({int(first)}, {end - 1}, {chunk}) as b"
            " cross join lateral (select string_agg(row_to_json(r)::text, E'\\n') as lines"
            f" from (select {self.columns} from {self.table}"
            " where ctid >= format('(%s,0)', b)::tid"
            f" and ctid < format('(%s,0)', least(b + {chunk}, {end}))::tid{self.condition})"
            " as r) as chunk where chunk.lines is not null"
        )


def pages_query(
    dataset: Dataset, *, dialect: Dialect, changes: Changes | None = None
) -> PagesQuery:
    """The whole table (or its `changes`: rows the previous export did not carry) as JSON text,
    one statement per range of pages."""
    quote = dialect.identifier_preparer.quote
    condition = ""
    if changes is not None:
        sql, params = changes.sql(quote(dataset.table.name))
        # Digits, commas and braces: inlined as literals, no round trip per statement.
        inlined = (
            text(sql)
            .bindparams(**params)
            .compile(dialect=dialect, compile_kwargs={"literal_binds": True})
        )
        condition = f" and {inlined}"
    return PagesQuery(
        columns=", ".join(quote(name) for name in dataset.export_columns),
        table=quote(dataset.table.name),
        condition=condition,
    )


def copy_values(data: bytes) -> list[memoryview]:
    """The values of a one-column `COPY … TO STDOUT (FORMAT binary)`, NULLs left out: the
    signature and header, then per row a field count (1), a length (-1: NULL) and the bytes, then
    -1. Text goes as is, without the escaping or quoting of the text and CSV formats."""
    view = memoryview(data)
    if view[:11] != _SIGNATURE:
        raise ValueError("not COPY's binary format")
    at = 19 + int.from_bytes(view[15:19], "big")  # past the header extension
    values = []
    while (fields := int.from_bytes(view[at : at + 2], "big", signed=True)) != -1:
        if fields != 1:
            raise ValueError(f"a row of {fields} fields in a one-column COPY")
        size = int.from_bytes(view[at + 2 : at + 6], "big", signed=True)
        at += 6
        if size >= 0:
            values.append(view[at : at + size])
            at += size
    return values


@dataclass
class _Segments:
    """The page range cut into segments, claimed in order by any reader, written in order.

    A reader that finishes a segment leaves it with the others read ahead of their turn; the
    reader that finishes the next one due writes every one due, then claims again. At most
    `ahead` segments are claimed and not yet written: memory stays bounded.
    """

    query: PagesQuery
    pages: int
    sink: Sink
    progress: Progress
    ahead: int
    claimed: int = 0
    written: int = 0
    rows: int = 0
    ready: dict[int, bytes] = field(default_factory=dict)
    writing: bool = False
    turn: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def count(self) -> int:
        return -(-self.pages // SEGMENT_PAGES)

    async def claim(self) -> int | None:
        """The next segment to read, once fewer than `ahead` wait to be written; None at the end."""
        async with self.turn:
            await self.turn.wait_for(lambda: self.claimed - self.written < self.ahead)
        if self.claimed == self.count:
            return None
        self.claimed += 1
        return self.claimed - 1

    async def read(self, conn: AsyncConnection, index: int) -> None:
        """COPY segment `index` on `conn`, then write every segment that is due."""
        held: list[bytes] = []

        async def receive(data: bytes) -> None:
            held.append(data)

        first = index * SEGMENT_PAGES
        driver = await driver_connection(conn)
        try:
            await driver.copy_from_query(
                self.query(first, min(first + SEGMENT_PAGES, self.pages)),
                output=receive,
                format="binary",
            )
        except BaseException:
            # As for CSV (stream.copy_csv): a COPY stopped midway can leave asyncpg waiting
            # forever on the connection's next use; close it instead.
            await conn.invalidate()
            raise
        values = copy_values(b"".join(held))
        self.ready[index] = b"\n".join(values) + b"\n" if values else b""
        del held[:], values
        if not self.writing:  # else the reader writing now takes this one too, in its turn
            await self._write_due()

    async def _write_due(self) -> None:
        self.writing = True
        try:
            while (lines := self.ready.pop(self.written, None)) is not None:
                await self.sink(lines)
                self.rows += lines.count(b"\n")  # JSON text holds no newline of its own
                await self.progress(self.rows)
                async with self.turn:
                    self.written += 1
                    self.turn.notify_all()
        finally:
            self.writing = False


@dataclass
class _Reader:
    segments: _Segments
    claimed: int = 0
    reading: bool = False
    """Past its start: the reader has a connection in the snapshot and its lock."""

    async def read_all(self, conn: AsyncConnection) -> None:
        """Read segments on `conn` until none is left unclaimed."""
        self.reading = True
        while (index := await self.segments.claim()) is not None:
            self.claimed += 1
            await self.segments.read(conn, index)

    async def help(self, join: Join, snapshot_id: str, table: str) -> None:
        """As a helper: nothing if it cannot start; once it has claimed a segment, its failure
        is the export's."""
        try:
            async with join(snapshot_id) as conn:
                await conn.execute(text(f"lock table {table} in access share mode nowait"))
                await self.read_all(conn)
        except Exception:
            if self.claimed:
                raise
            # Could not start: the other readers read everything.


async def jsonl_by_pages(
    conn: AsyncConnection,
    *,
    dataset: Dataset,
    changes: Changes | None,
    sink: Sink,
    progress: Progress,
    join: Join | None,
) -> int:
    """Stream the whole table (or its `changes`) as JSON Lines into `sink`, in page order;
    returns the number of rows. `conn` is the snapshot's; `join` opens helpers (None: none)."""
    dialect = conn.dialect
    table = dialect.identifier_preparer.quote(dataset.table.name)
    regclass = "'" + table.replace("'", "''") + "'::regclass"
    size = f"select pg_relation_size({regclass}) / current_setting('block_size')::int"
    segments = _Segments(
        query=pages_query(dataset, dialect=dialect, changes=changes),
        pages=(await conn.execute(text(size))).scalar_one(),
        sink=sink,
        progress=progress,
        ahead=READERS + 1,
    )
    helpers = [_Reader(segments) for _ in range(READERS - 1 if segments.count > 1 else 0)]
    snapshot_id = await _export_snapshot(conn) if helpers and join is not None else None
    if join is None or snapshot_id is None:
        await _Reader(segments).read_all(conn)
        return segments.rows
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(h.help(join, snapshot_id, table)) for h in helpers]
            await _Reader(segments).read_all(conn)
            async with segments.turn:
                await segments.turn.wait_for(lambda: segments.written == segments.count)
            for helper, task in zip(helpers, tasks, strict=True):
                if not helper.reading:
                    task.cancel()  # still waiting for its connection: no longer needed
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return segments.rows


async def _export_snapshot(conn: AsyncConnection) -> str | None:
    """The snapshot's id for helpers to import, or None where this role may not export it."""
    exported = (
        await conn.execute(
            text(
                "select case when has_function_privilege("
                "'pg_catalog.pg_export_snapshot()', 'execute') then pg_export_snapshot() end"
            )
        )
    ).scalar_one()
    if exported is None or not SNAPSHOT_ID.fullmatch(exported):
        return None
    return str(exported)
