"""Incremental exports (`export_dataset(..., incremental=feed)`) on real PostgreSQL.

The first export of a feed holds every row; each later one exactly the rows inserted or updated
since the previous one was taken, whoever wrote them and however long their transaction ran.
"""

from __future__ import annotations

import asyncio
import csv
import errno
import gzip
import io
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis
from arq.jobs import Job
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs import schema as tables
from jobs.exports import feeds
from jobs.exports.feeds import FeedBusy, FeedDatasetMismatch
from jobs.exports.files import ExportFileError, StagedFile
from jobs.exports.job import export_dataset
from jobs.exports.pages import pages_query
from jobs.exports.stream import rows_query
from jobs.exports.xids import (
    MAX_CURSOR_AGE,
    XID_MASK,
    Changes,
    PgSnapshot,
    cursor_text,
    usable_cursor,
)
from jobs.models import ExportPayload, ExportResult
from jobs.registry import get_dataset
from tests.support.database import asyncpg_dsn
from tests.support.worker_helpers import run_burst
from worker.context import AppContext
from worker.runner import RunHandle
from worker.settings import Settings

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def customer(i: int, name: str | None = None) -> dict[str, Any]:
    return {
        "external_id": f"C{i:05d}",
        "email": f"c{i}@example.com",
        "full_name": name or f"Customer {i}",
        "country": "GB",
        "created_at": T0,
    }


async def seed(engine: AsyncEngine, ids: range) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(tables.customers), [customer(i) for i in ids])


async def export(app: AppContext, run: RunHandle | None = None, **payload: Any) -> ExportResult:
    run = run or RunHandle(app=app, job_id=uuid.uuid4().hex, job_try=1)
    payload.setdefault("dataset", "customers")
    return await export_dataset.impl(run, ExportPayload.model_validate(payload))


def names(result: ExportResult) -> dict[str, str]:
    """external_id -> full_name of each row in the export's file."""
    raw = Path(result.path).read_bytes()
    data = (gzip.decompress(raw) if result.compressed else raw).decode()
    if result.format == "csv":
        records: list[dict[str, Any]] = list(csv.DictReader(io.StringIO(data, newline="")))
    else:
        records = [json.loads(line) for line in data.splitlines()]
    assert len(records) == result.rows
    return {record["external_id"]: record["full_name"] for record in records}


def manifest(result: ExportResult) -> dict[str, Any]:
    path = Path(result.path)
    loaded: dict[str, Any] = json.loads(path.with_name(path.name + ".manifest.json").read_text())
    return loaded


def lowered(result: ExportResult) -> bool:
    """Whether the export had to store a cursor below its snapshot (xids.cursor_text): one of
    the snapshot's open transactions ended while the export read their statuses."""
    recorded = manifest(result)["incremental"]
    return PgSnapshot.parse(recorded["cursor"]).xmax < PgSnapshot.parse(recorded["snapshot"]).xmax


def assert_changes(previous: ExportResult, result: ExportResult, expected: dict[str, str]) -> None:
    """`result` holds exactly `expected`; more only where `previous` lowered its cursor.

    The server is shared (other test runs commit on it all the time): when one of their
    transactions ends during the statuses read, rows committed just before that snapshot,
    such as this test's own, are sent again. That costs repeats, never a missing row.
    """
    got = names(result)
    if lowered(previous):
        assert expected.items() <= got.items()
    else:
        assert got == expected


async def feed_row(engine: AsyncEngine, name: str) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(tables.export_feeds).where(tables.export_feeds.c.name == name)
            )
        ).one_or_none()
    return None if row is None else dict(row._mapping)


def files(app: AppContext) -> list[str]:
    directory = app.settings.export_dir / "customers"
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


async def commit_another(engine: AsyncEngine) -> None:
    """Commit a transaction that has an id, as a busy server does all the time: the next
    snapshot's xmax then passes every id assigned before it, the open writer's included."""
    async with engine.begin() as conn:
        await conn.execute(text("select pg_current_xact_id()"))


@pytest.fixture
async def writer(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection: SQL from outside the service, as any other program sends it."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    yield conn
    await conn.close()


# --- the arithmetic, in SQL -------------------------------------------------------------------


# Distances back from the current transaction id L: the cursor, and rows' xmin to judge.
CURSOR_XMIN, CURSOR_XMAX = 1000, 500
CURSOR_XIP = (1000, 990, 980, 970, 960, 950, 940, 930, 920, 910, 900, 700)  # 12: a hashed ANY
UNSEEN = {1000, 950, 900, 700, 500, 499, 10, 1}  # in the list, or at or after its xmax
SEEN = {5000, 1001, 995, 955, 899, 701, 501}  # committed before it, as far as it knows


@pytest.mark.parametrize(
    "wrapped",
    [False, True],
    ids=["one epoch", "the counter wrapped between the cursor and the rows"],
)
async def test_the_change_filter_in_sql(engine: AsyncEngine, wrapped: bool) -> None:
    """`Changes.clause` against synthetic ids, as 32-bit xmin values, around the current id."""
    async with engine.begin() as conn:
        # age() reads L once per transaction: the same L for this statement and the next.
        now = int(await conn.scalar(text("select (age('3'::xid)::bigint + 3) & 4294967295")))
        # Wrapped: shift every id so that the cursor lies before the 32-bit counter's wrap to 0
        # and the newest rows after it.
        shift = now - 600 if wrapped else 0
        assert now > 5000 + shift or wrapped

        def xid(distance: int) -> int:
            return now - distance - shift  # a 64-bit id, negative before the wrap (epoch -1)

        cursor = PgSnapshot(
            xid(CURSOR_XMIN), xid(CURSOR_XMAX), tuple(sorted(xid(d) for d in CURSOR_XIP))
        )
        values = {(xid(d) & XID_MASK): d for d in SEEN | UNSEEN}
        assert not set(values) & {0, 1, 2}
        values.update({0: -1, 1: -1, 2: -1})  # special ids: older than every snapshot
        condition, params = Changes(after=str(cursor)).sql("rows")
        query = text(
            "select rows.xmin::text from unnest(cast(cast(:xmins as text) as xid[])) as rows(xmin)"
            f" where {condition}"
        ).bindparams(xmins="{" + ",".join(map(str, values)) + "}", **params)
        unseen = {values[int(x)] for x in (await conn.execute(query)).scalars()}
    assert unseen == UNSEEN


def widen(xid: int, *, below: int) -> int:
    """The largest 64-bit id under `below` whose low 32 bits are `xid`."""
    return below - 1 - ((below - 1 - xid) & XID_MASK)


async def test_visible_in_snapshot_misjudges_a_subtransaction(
    engine: AsyncEngine, clean_db: None, writer: asyncpg.Connection
) -> None:
    """Why the cursor is not the bare snapshot: PostgreSQL's own function, on a savepoint's row."""
    transaction = writer.transaction()
    await transaction.start()
    try:
        await writer.execute("savepoint a")
        await writer.execute(
            "insert into customers (external_id, email, full_name, country,"
            " created_at) values ('X1', 'x@example.com', 'X', 'GB', now())"
        )
        sub = await writer.fetchval("select xmin::text from customers")
        await writer.execute("release savepoint a")
        await commit_another(engine)
        async with engine.connect() as conn:
            snap = await conn.scalar(text("select pg_current_snapshot()::text"))
            visible = await conn.scalar(
                text(
                    "select pg_visible_in_snapshot(cast(cast(:x as text) as xid8),"
                    " cast(cast(:s as text) as pg_snapshot))"
                ),
                {"x": str(widen(int(sub), below=PgSnapshot.parse(snap).xmax)), "s": snap},
            )
        assert visible  # though its transaction has not committed
    finally:
        await transaction.rollback()


# --- the cursor, without a database -----------------------------------------------------------


@pytest.mark.parametrize(
    ("snap", "scanned_to", "in_progress", "ended", "expected"),
    [
        ("100:100:", 100, [], [], "100:100:"),
        # subtransactions of 100 and 104 join the list; ids the snapshot saw stay out of it
        ("100:110:100,104", 110, [101, 105, 106], [], "100:110:100,101,104,105,106"),
        # 104 ended before its statuses were read: everything above it is unseen
        ("100:110:100,104", 110, [101], [104], "100:105:100,101,104"),
        ("100:110:100,104", 110, [101], [100], "100:101:100"),
        # the scan stopped at 103: what it did not reach is unseen
        ("100:110:100,104", 103, [101], [], "100:103:100,101"),
        # lowered onto an id whose low 32 bits are 0, never assigned: one step further back
        (
            "4294967290:4294967300:4294967290",
            4294967300,
            [],
            [4294967295],
            "4294967290:4294967295:4294967290",
        ),
    ],
)
def test_the_cursor_never_sees_what_the_snapshot_did_not(
    snap: str, scanned_to: int, in_progress: list[int], ended: list[int], expected: str
) -> None:
    parsed = PgSnapshot.parse(snap)
    assert str(parsed) == snap
    got = cursor_text(parsed, scanned_to=scanned_to, in_progress=in_progress, ended=ended)
    assert got == expected


@pytest.mark.parametrize(
    ("cursor", "reference", "usable"),
    [
        ("100:110:104", 200, True),
        ("100:110:104", 110, True),
        ("100:110:104", 109, False),  # from the future: the database was restored elsewhere
        ("100:110:", 100 + MAX_CURSOR_AGE - 1, True),
        ("100:110:", 100 + MAX_CURSOR_AGE, False),  # too old for age() to order its ids
    ],
)
def test_a_cursor_too_old_or_from_the_future_is_not_used(
    cursor: str, reference: int, usable: bool
) -> None:
    assert usable_cursor(cursor, reference=reference) is usable


# --- feeds --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "compress"), [("csv", False), ("jsonl", True)])
async def test_first_export_is_complete_then_each_holds_only_the_changes(
    app: AppContext, engine: AsyncEngine, writer: asyncpg.Connection, fmt: str, compress: bool
) -> None:
    await seed(engine, range(1, 13))
    first = await export(app, incremental="crm", format=fmt, compress=compress)
    assert first.rows == len(names(first)) == 12
    assert first.incremental is not None
    assert (first.incremental.export, first.incremental.complete) == (1, True)

    unchanged = await export(app, incremental="crm", format=fmt, compress=compress)
    assert_changes(first, unchanged, {})
    assert unchanged.incremental is not None
    assert (unchanged.incremental.export, unchanged.incremental.complete) == (2, False)

    # Plain SQL from outside the service: an update, an insert, an update to the same value.
    await writer.execute("update customers set full_name = 'Renamed' where external_id = 'C00003'")
    await writer.execute(
        "insert into customers (external_id, email, full_name, country, created_at)"
        " values ('C00100', 'c100@example.com', 'New', 'US', now())"
    )
    await writer.execute("update customers set country = country where external_id = 'C00007'")
    await writer.execute("delete from customers where external_id = 'C00009'")  # not carried
    changes = await export(app, incremental="crm", format=fmt, compress=compress)
    expected = {"C00003": "Renamed", "C00100": "New", "C00007": "Customer 7"}
    assert_changes(unchanged, changes, expected)

    assert_changes(changes, await export(app, incremental="crm", format=fmt), {})
    row = await feed_row(engine, "crm")
    assert row is not None
    newest = [name for name in files(app) if not name.endswith(".manifest.json")][-1]
    assert (row["dataset"], row["exports"], row["file"]) == ("customers", 4, newest)


@dataclass
class Writer:
    """One way of writing rows in a transaction that is still open during an export."""

    name: str
    statements: list[str]


INSERT = (
    "insert into customers (external_id, email, full_name, country, created_at)"
    " values ('C00100', 'c100@example.com', 'Late', 'US', now())"
)
UPDATE = "update customers set full_name = 'Late change' where external_id = 'C00002'"
WRITERS = [
    Writer("plain", [INSERT, UPDATE]),
    Writer("savepoint", ["savepoint a", INSERT, "release savepoint a", UPDATE]),
    Writer(
        "nested savepoints",
        ["savepoint a", "savepoint b", INSERT, "release savepoint b", UPDATE, "release a"],
    ),
    Writer("rolled-back savepoint", ["savepoint a", INSERT, "rollback to a", INSERT, UPDATE]),
    Writer(
        "plpgsql exception block",
        [f"do $$ begin begin {INSERT}; {UPDATE}; exception when others then raise; end; end $$"],
    ),
]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("how", WRITERS, ids=lambda w: w.name)
async def test_a_transaction_open_during_an_export_is_in_the_next_one(
    app: AppContext, engine: AsyncEngine, writer: asyncpg.Connection, how: Writer, fmt: str
) -> None:
    """The reproduction: begun before export 1, committed after it; `since` misses its rows."""
    await seed(engine, range(1, 6))
    transaction = writer.transaction()
    await transaction.start()
    for statement in how.statements:
        await writer.execute(statement)
    await commit_another(engine)
    first = await export(app, incremental="crm", format=fmt)
    await transaction.commit()
    assert first.rows == 5 and "C00100" not in names(first)
    assert names(first)["C00002"] == "Customer 2"

    second = await export(app, incremental="crm", format=fmt)
    assert_changes(first, second, {"C00100": "Late", "C00002": "Late change"})

    # The limit of `since`: the writer's rows carry its start time, before export 1's snapshot.
    since = manifest(first)["snapshot_at"]
    assert (await export(app, since=since, format=fmt)).rows == 0


async def test_rows_committed_while_an_older_writer_is_open_are_not_repeated(
    app: AppContext, engine: AsyncEngine, writer: asyncpg.Connection
) -> None:
    await seed(engine, range(1, 6))
    transaction = writer.transaction()
    await transaction.start()
    await writer.execute(INSERT)  # open at export 1, older than the next transactions
    await seed(engine, range(6, 9))  # newer transactions, committed before export 1
    async with engine.begin() as conn:  # and one that commits inside a savepoint
        nested = await conn.begin_nested()
        await conn.execute(text("update customers set full_name = 'Sub' where id = 1"))
        await nested.commit()
    first = await export(app, incremental="crm")
    await transaction.commit()
    assert first.rows == 8
    cursor = PgSnapshot.parse(manifest(first)["incremental"]["cursor"])
    assert str(cursor) == (await feed_row(engine, "crm") or {})["cursor"]
    second = await export(app, incremental="crm")
    assert_changes(first, second, {"C00100": "Late"})


async def test_beyond_the_scan_limit_rows_repeat_and_none_is_lost(
    app: AppContext,
    engine: AsyncEngine,
    writer: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(feeds, "SCAN_LIMIT", 1)
    await seed(engine, range(1, 6))
    transaction = writer.transaction()
    await transaction.start()
    await writer.execute("savepoint a")
    await writer.execute(INSERT)
    await writer.execute("release savepoint a")
    await seed(engine, range(6, 9))
    first = await export(app, incremental="crm")
    await transaction.commit()
    assert first.rows == 8
    cursor = PgSnapshot.parse(manifest(first)["incremental"]["cursor"])
    assert cursor.xmax == cursor.xmin + 1  # ids past the one scanned count as unseen
    second = await export(app, incremental="crm")
    # 6-8 were committed after the writer began, so they go out again: repeats, no loss
    assert {"C00100", "C00006", "C00007", "C00008"} <= set(names(second))


async def test_the_manifest_and_the_feed_record_the_cursor(
    app: AppContext, engine: AsyncEngine
) -> None:
    await seed(engine, range(1, 4))
    run = RunHandle(app=app, job_id="5f2b8c0e9d6a4b1c8e7f6a5b4c3d2e1f", job_try=1)
    first = await export(app, run, incremental="crm-2026_a")
    row = await feed_row(engine, "crm-2026_a")
    assert row is not None
    recorded = manifest(first)["incremental"]
    snapshot = PgSnapshot.parse(recorded["snapshot"])
    async with engine.connect() as conn:
        now = PgSnapshot.parse(await conn.scalar(text("select pg_current_snapshot()::text")))
    assert snapshot.xmax <= now.xmax
    # The cursor is the snapshot, with any subtransactions of its open transactions added.
    cursor = PgSnapshot.parse(row["cursor"])
    assert (cursor.xmin, cursor.xmax) == (snapshot.xmin, snapshot.xmax)
    assert set(snapshot.xip) <= set(cursor.xip)
    assert recorded == {
        "feed": "crm-2026_a",
        "export": 1,
        "complete": True,
        "after": None,
        "snapshot": str(snapshot),
        "cursor": row["cursor"],
    }
    assert row["job_id"] == run.job_id
    assert row["exported_at"] == datetime.fromisoformat(manifest(first)["snapshot_at"])

    second = await export(app, incremental="crm-2026_a")
    later = await feed_row(engine, "crm-2026_a")
    assert later is not None
    assert manifest(second)["incremental"] == {
        "feed": "crm-2026_a",
        "export": 2,
        "complete": False,
        "after": row["cursor"],
        "snapshot": manifest(second)["incremental"]["snapshot"],
        "cursor": later["cursor"],
    }


def failing_at(where: str, dataset: str = "customers") -> Callable[..., Any]:
    """A StagedFile method that fails with ENOSPC for files of `dataset` whose name has `where`."""

    def pick(original: Callable[..., Any]) -> Callable[..., Any]:
        def method(self: StagedFile, *args: Any) -> Any:
            if self.final.parent.name == dataset and where in self.final.name:
                raise OSError(errno.ENOSPC, "No space left on device")
            return original(self, *args)

        return method

    return pick


@pytest.mark.parametrize(
    ("method", "where", "step"),
    [
        ("_put", ".csv", "while writing customers"),
        ("_make_visible", ".csv", "while publishing"),
        ("_make_visible", ".manifest.json", "while publishing"),
    ],
)
async def test_a_failed_export_does_not_advance_the_feed(
    app: AppContext,
    engine: AsyncEngine,
    writer: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    where: str,
    step: str,
) -> None:
    await seed(engine, range(1, 4))
    first = await export(app, incremental="crm")
    before = await feed_row(engine, "crm")
    listed = files(app)
    await writer.execute("update customers set full_name = 'Changed' where id = 2")

    monkeypatch.setattr(StagedFile, method, failing_at(where)(getattr(StagedFile, method)))
    with pytest.raises(ExportFileError) as caught:
        await export(app, incremental="crm")
    assert str(caught.value) == (
        f"export failed {step}; no file of this export was published:"
        " OSError: [Errno 28] No space left on device"
    )
    assert await feed_row(engine, "crm") == before
    assert files(app) == listed  # nothing new, no temp file

    monkeypatch.undo()
    again = await export(app, incremental="crm")
    assert_changes(first, again, {"C00002": "Changed"})


async def test_a_feed_follows_one_dataset(app: AppContext, engine: AsyncEngine) -> None:
    await seed(engine, range(1, 4))
    await export(app, incremental="crm")
    with pytest.raises(FeedDatasetMismatch) as caught:
        await export(app, dataset="accounts", incremental="crm")
    assert str(caught.value) == (
        "export feed 'crm' follows dataset 'customers', not 'accounts'; "
        "use another feed name for accounts"
    )
    assert not list((app.settings.export_dir / "accounts").iterdir())
    other = await export(app, dataset="accounts", incremental="crm-accounts")
    assert other.incremental is not None and other.incremental.complete


@dataclass
class StallRun(RunHandle):
    """Calls `hook` at the first progress report (the snapshot is taken and the feed locked)."""

    hook: Callable[[], Awaitable[None]] | None = None

    async def progress(self, **counters: int) -> None:
        if self.hook is not None:
            hook, self.hook = self.hook, None
            await hook()
        await super().progress(**counters)


async def test_a_second_export_of_a_busy_feed_fails_at_once(
    app: AppContext, engine: AsyncEngine
) -> None:
    await seed(engine, range(1, 4))
    caught: list[BaseException] = []

    async def second() -> None:
        with pytest.raises(FeedBusy) as error:
            await asyncio.wait_for(export(app, incremental="crm"), timeout=10)
        caught.append(error.value)

    run = StallRun(app=app, job_id=uuid.uuid4().hex, job_try=1, hook=second)
    first = await export(app, run, incremental="crm")
    assert [str(e) for e in caught] == [
        "export feed 'crm' is being exported by another job; "
        "enqueue this export again when that one has finished"
    ]
    assert first.rows == 3
    row = await feed_row(engine, "crm")
    assert row is not None and row["exports"] == 1


async def test_an_incremental_export_through_the_real_worker(
    settings: Settings, redis: ArqRedis, engine: AsyncEngine, clean_db: None
) -> None:
    await seed(engine, range(1, 4))
    results = []
    for _ in range(2):
        job = await redis.enqueue_job(
            "export_dataset",
            dataset="customers",
            incremental="nightly-crm",
            _queue_name=settings.queue_name,
        )
        assert job is not None
        worker = await run_burst(settings, redis)
        assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
        results.append(
            await Job(
                job.job_id,
                redis,
                _queue_name=settings.queue_name,
                _deserializer=redis.job_deserializer,
            ).result(timeout=5)
        )
    assert [(r["rows"], r["incremental"]) for r in results] == [
        (3, {"feed": "nightly-crm", "export": 1, "complete": True}),
        (0, {"feed": "nightly-crm", "export": 2, "complete": False}),
    ]


async def test_the_plain_export_reads_without_the_filter(
    app: AppContext, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exports without `incremental` keep their own queries: no xmin, no cursor, read only."""
    seen: list[str] = []
    original = asyncpg.Connection.copy_from_query

    async def spy(self: asyncpg.Connection, query: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(query)
        return await original(self, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "copy_from_query", spy)
    await seed(engine, range(1, 3))
    await export(app)
    await export(app, incremental="crm")
    await export(app, incremental="crm")
    assert ["xmin" in query for query in seen] == [False, False, True]
    assert (await feed_row(engine, "crm") or {})["exports"] == 2
    customers = get_dataset("customers")
    for query in (
        pages_query(customers, dialect=engine.dialect)(0, 4),
        rows_query(customers, since=None, changes=None, dialect=engine.dialect),
    ):
        assert "xmin" not in str(query)
    assert "age(" in str(
        pages_query(customers, dialect=engine.dialect, changes=Changes("5:5:"))(0, 4)
    )
