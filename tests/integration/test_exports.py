"""`export_dataset` on real PostgreSQL: contents, since, manifest, atomicity, snapshot, modes."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gzip
import hashlib
import io
import json
import os
import re
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.jobs import Job
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from jobs import schema as tables
from jobs.errors import PathNotAllowed
from jobs.exports import pages as export_pages
from jobs.exports import stream as export_stream
from jobs.exports.job import export_dataset
from jobs.exports.stream import snapshot
from jobs.models import ExportPayload, ExportResult
from jobs.registry import get_dataset
from tests.support.worker_helpers import run_burst
from worker.context import AppContext
from worker.db import create_sessionmaker
from worker.runner import RunHandle
from worker.settings import Settings

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NAME = re.compile(r"customers-\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{8}\.(csv|jsonl)(\.gz)?")
AWKWARD_NAMES = [
    'Ann "Quote" O\'Brien',
    "Comma, Person",
    "Two\nLines",
    "Zoë Ünicode 名前",
    "Back\\slash",
    " Padded ",
]


def customer(
    i: int, *, full_name: str | None = None, updated: datetime | None = None
) -> dict[str, Any]:
    return {
        "external_id": f"C{i:05d}",
        "email": f"c{i}@example.com",
        "full_name": full_name or f"Customer {i}",
        "country": "GB" if i % 2 else "US",
        "created_at": T0 + timedelta(hours=i),
        "updated_at": updated or T0 + timedelta(days=i, microseconds=i),
    }


async def seed_customers(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(tables.customers), rows)


async def seed_all(engine: AsyncEngine) -> None:
    await seed_customers(
        engine,
        [customer(i, full_name=AWKWARD_NAMES[i % len(AWKWARD_NAMES)]) for i in range(1, 13)],
    )
    async with engine.begin() as conn:
        await conn.execute(
            insert(tables.accounts),
            [
                {
                    "id": 100 + i,
                    "customer_external_id": f"C{i:05d}" if i % 3 else None,
                    "currency": "EUR",
                    "balance_cents": 2**62 + i,
                    "updated_at": T0 + timedelta(days=i),
                }
                for i in range(1, 6)
            ],
        )
        await conn.execute(
            insert(tables.transfers),
            [
                {
                    "id": uuid.UUID(int=i),
                    "from_account_id": 101,
                    "to_account_id": 102,
                    "amount_cents": 500 * i,
                    "status": "applied" if i % 2 else "rejected",
                    "reason": None if i % 2 else "insufficient funds",
                    "created_at": T0 + timedelta(days=i),
                }
                for i in range(1, 5)
            ],
        )


async def db_rows(engine: AsyncEngine, dataset: str) -> list[dict[str, Any]]:
    table = get_dataset(dataset).table
    async with engine.connect() as conn:
        result = await conn.execute(select(table).order_by(*table.primary_key.columns))
        return [dict(row._mapping) for row in result]


def read_raw(path: Path) -> bytes:
    return path.read_bytes()


def read_bytes(path: Path) -> bytes:
    """The file's contents, decompressed if it is gzipped."""
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.name.endswith(".gz") else raw


def typed(dataset: str, row: dict[str, Any]) -> dict[str, Any]:
    """A row read back from a file, with each value in the type the database returns."""
    table = get_dataset(dataset).table
    out: dict[str, Any] = {}
    for name, value in row.items():
        python_type = table.c[name].type.python_type
        if value is None or (value == "" and table.c[name].nullable):
            out[name] = None  # CSV writes NULL as an empty unquoted field
        elif python_type is datetime:
            out[name] = datetime.fromisoformat(value)
        elif python_type is uuid.UUID:
            out[name] = uuid.UUID(value)
        else:
            out[name] = python_type(value)
    return out


def read_rows(path: Path, dataset: str) -> list[dict[str, Any]]:
    data = read_bytes(path).decode()
    if ".csv" in path.name:
        records: list[dict[str, Any]] = list(csv.DictReader(io.StringIO(data, newline="")))
    else:
        assert data.endswith("\n")
        records = [json.loads(line) for line in data.split("\n")[:-1]]
    rows = [typed(dataset, record) for record in records]
    key = get_dataset(dataset).table.primary_key.columns.keys()[0]
    return sorted(rows, key=lambda row: row[key])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


@dataclass
class HookRun(RunHandle):
    """A RunHandle that calls `hook(n)` on its n-th progress report (0-based)."""

    hook: Any = None
    calls: int = 0

    async def progress(self, **counters: int) -> None:
        n = self.calls
        self.calls += 1
        if self.hook is not None:
            await self.hook(n)
        await super().progress(**counters)


async def export(app: AppContext, run: RunHandle | None = None, **payload: Any) -> ExportResult:
    run = run or RunHandle(app=app, job_id=uuid.uuid4().hex, job_try=1)
    return await export_dataset.impl(run, ExportPayload.model_validate(payload))


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """JSON Lines read 3 rows, or 1 heap page, at a time: a small table spans many batches."""
    monkeypatch.setattr(export_stream, "BATCH_ROWS", 3)
    monkeypatch.setattr(export_pages, "SEGMENT_PAGES", 1)
    monkeypatch.setattr(export_pages, "CHUNK_PAGES", 1)
    yield


async def seed_wide(engine: AsyncEngine) -> int:
    """The 12 usual customers and 40 wide ones (four to a heap page); returns the row count."""
    await seed_all(engine)
    # Random text, short enough to stay in the row: PostgreSQL neither compresses nor TOASTs it.
    wide = [customer(i, full_name=os.urandom(950).hex()) for i in range(13, 53)]
    await seed_customers(engine, wide)
    async with engine.connect() as conn:
        pages = (
            await conn.execute(
                text("select pg_relation_size('customers') / current_setting('block_size')::int")
            )
        ).scalar_one()
    assert pages >= 10
    return 52


# JSON Lines reads a whole table a few pages at a time; with `since`, row by row.
READINGS = [
    pytest.param("csv", None, id="csv"),
    pytest.param("jsonl", None, id="jsonl-pages"),
    pytest.param("jsonl", "2000-01-01T00:00:00Z", id="jsonl-rows"),
]


@pytest.mark.parametrize(
    ("fmt", "compress"), [("csv", False), ("csv", True), ("jsonl", False), ("jsonl", True)]
)
async def test_export_reads_back_exactly(
    app: AppContext, engine: AsyncEngine, fmt: str, compress: bool
) -> None:
    await seed_all(engine)
    result = await export(app, dataset="customers", format=fmt, compress=compress)

    path = Path(result.path)
    assert path.parent == app.settings.export_dir / "customers"
    assert NAME.fullmatch(path.name)
    assert path.name.endswith(f".{fmt}.gz" if compress else f".{fmt}")
    raw = read_raw(path)
    assert (result.rows, result.bytes, result.sha256) == (
        12,
        len(raw),
        hashlib.sha256(raw).hexdigest(),
    )
    assert (result.dataset, result.format, result.compressed) == ("customers", fmt, compress)
    if compress:
        assert raw[:2] == b"\x1f\x8b"  # a gzip stream `gzip -d` reads
    assert read_rows(path, "customers") == await db_rows(engine, "customers")


async def test_csv_has_a_header_and_utc_timestamps_whatever_the_server_zone(
    app: AppContext, engine: AsyncEngine
) -> None:
    await seed_customers(engine, [customer(1)])
    # Connections whose session time zone is not UTC, as a server's default may be.
    kolkata = create_async_engine(
        engine.url,
        poolclass=NullPool,
        connect_args={"server_settings": {"timezone": "Asia/Kolkata"}},
    )
    try:
        result = await export(replace(app, engine=kolkata), dataset="customers", format="csv")
    finally:
        await kolkata.dispose()
    assert read_bytes(Path(result.path)).decode() == (
        "id,external_id,email,full_name,country,created_at,updated_at\n"
        "1,C00001,c1@example.com,Customer 1,GB,"
        "2026-01-01 01:00:00+00,2026-01-02 00:00:00.000001+00\n"
    )


async def test_jsonl_is_one_object_per_row(app: AppContext, engine: AsyncEngine) -> None:
    await seed_customers(engine, [customer(1, full_name='Line\nbreak "q"')])
    result = await export(app, dataset="customers", format="jsonl")
    assert read_bytes(Path(result.path)).decode() == (
        '{"id":1,"external_id":"C00001","email":"c1@example.com",'
        '"full_name":"Line\\nbreak \\"q\\"","country":"GB",'
        '"created_at":"2026-01-01T01:00:00+00:00","updated_at":"2026-01-02T00:00:00.000001+00:00"}\n'
    )


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_accounts_and_transfers_export_with_their_types(
    app: AppContext, engine: AsyncEngine, fmt: str
) -> None:
    await seed_all(engine)
    for dataset in ("accounts", "transfers"):
        result = await export(app, dataset=dataset, format=fmt)
        assert result.rows == len(await db_rows(engine, dataset))
        assert read_rows(Path(result.path), dataset) == await db_rows(engine, dataset)
    if fmt == "jsonl":
        first = json.loads(read_bytes(Path(result.path)).decode().split("\n")[0])
        assert first["id"] == str(uuid.UUID(int=1))  # UUIDs as strings
        assert first["reason"] is None


@pytest.mark.parametrize(("fmt", "compress"), [("csv", False), ("jsonl", True)])
async def test_since_exports_only_later_rows(
    app: AppContext, engine: AsyncEngine, fmt: str, compress: bool
) -> None:
    await seed_all(engine)
    since = T0 + timedelta(days=8, microseconds=8)  # customer 8's updated_at: not later than it
    result = await export(
        app, dataset="customers", format=fmt, compress=compress, since=since.isoformat()
    )
    assert [row["external_id"] for row in read_rows(Path(result.path), "customers")] == [
        "C00009",
        "C00010",
        "C00011",
        "C00012",
    ]
    assert result.rows == 4

    # transfers compare created_at; a since without an offset is UTC
    naive = (T0 + timedelta(days=2)).replace(tzinfo=None).isoformat()
    result = await export(app, dataset="transfers", format=fmt, since=naive)
    assert [row["id"] for row in read_rows(Path(result.path), "transfers")] == [
        uuid.UUID(int=3),
        uuid.UUID(int=4),
    ]

    result = await export(app, dataset="accounts", format=fmt, since="2030-01-01T00:00:00Z")
    assert result.rows == 0
    expected = (
        b"id,customer_external_id,currency,balance_cents,updated_at\n" if fmt == "csv" else b""
    )
    assert read_bytes(Path(result.path)) == expected


async def test_manifest_describes_the_file(app: AppContext, engine: AsyncEngine) -> None:
    await seed_all(engine)
    async with engine.connect() as conn:
        before = (await conn.execute(text("select clock_timestamp()"))).scalar_one()
    run = RunHandle(app=app, job_id="5f2b8c0e9d6a4b1c8e7f6a5b4c3d2e1f", job_try=1)
    result = await export(app, run, dataset="customers", format="csv", compress=True)
    async with engine.connect() as conn:
        after = (await conn.execute(text("select clock_timestamp()"))).scalar_one()

    path = Path(result.path)
    manifest_path = path.with_name(path.name + ".manifest.json")
    manifest = json.loads(read_raw(manifest_path))
    raw = read_raw(path)
    snapshot_at = datetime.fromisoformat(manifest.pop("snapshot_at"))
    assert before <= snapshot_at <= after
    assert path.name == (
        f"customers-{snapshot_at.strftime('%Y%m%dT%H%M%S.%f')[:-3]}Z-5f2b8c0e.csv.gz"
    )
    assert manifest == {
        "dataset": "customers",
        "file": path.name,
        "format": "csv",
        "compressed": True,
        "columns": [
            "id",
            "external_id",
            "email",
            "full_name",
            "country",
            "created_at",
            "updated_at",
        ],
        "rows": 12,
        "bytes": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "since": None,
        "incremental": None,
        "job_id": "5f2b8c0e9d6a4b1c8e7f6a5b4c3d2e1f",
    }
    assert listing(path.parent) == sorted([path.name, manifest_path.name])


@pytest.mark.parametrize("umask", [0o000, 0o077])
async def test_files_are_0640_and_directories_0750(
    app: AppContext, engine: AsyncEngine, umask: int
) -> None:
    await seed_customers(engine, [customer(1)])
    previous = os.umask(umask)
    try:
        result = await export(app, dataset="customers", format="jsonl", compress=True)
    finally:
        os.umask(previous)
    path = Path(result.path)
    manifest_path = path.with_name(path.name + ".manifest.json")
    assert mode(path) == 0o640
    assert mode(manifest_path) == 0o640
    assert mode(path.parent) == 0o750
    assert mode(app.settings.export_dir) == 0o750


@pytest.mark.parametrize(("fmt", "since"), READINGS)
async def test_no_partial_file_is_visible_under_the_final_name(
    app: AppContext, engine: AsyncEngine, small_batches: None, fmt: str, since: str | None
) -> None:
    await seed_wide(engine)
    directory = app.settings.export_dir / "customers"
    seen: list[list[str]] = []

    async def look(n: int) -> None:
        seen.append(listing(directory))

    run = HookRun(app=app, job_id=uuid.uuid4().hex, job_try=1, hook=look)
    result = await export(app, run, dataset="customers", format=fmt, since=since)
    assert result.rows == 52
    final = Path(result.path).name
    assert len(seen) >= (2 if fmt == "csv" else 10)
    for names in seen:
        # only the hidden temp file, named after the final one, while the export runs
        assert len(names) == 1
        assert re.fullmatch(rf"\.{re.escape(final)}\.[0-9a-f]{{8}}\.tmp", names[0])
    assert listing(directory) == sorted([final, final + ".manifest.json"])


@pytest.mark.parametrize(
    ("fmt", "since", "fail_at"),
    [
        ("csv", None, 0),
        ("csv", None, 1),
        ("jsonl", None, 3),
        ("jsonl", "2000-01-01T00:00:00Z", 3),
    ],
)
async def test_a_failed_export_leaves_nothing_behind(
    app: AppContext,
    engine: AsyncEngine,
    small_batches: None,
    fmt: str,
    since: str | None,
    fail_at: int,
) -> None:
    rows = await seed_wide(engine)
    directory = app.settings.export_dir / "customers"

    async def fail(n: int) -> None:
        if n == fail_at:
            assert listing(directory)  # the temp file exists at this point
            raise RuntimeError("disk on fire")

    run = HookRun(app=app, job_id=uuid.uuid4().hex, job_try=1, hook=fail)
    with pytest.raises(RuntimeError, match="disk on fire"):
        await export(app, run, dataset="customers", format=fmt, compress=True, since=since)
    assert run.calls == fail_at + 1
    assert listing(directory) == []
    # the snapshot's connection went back to the pool usable
    assert (await export(app, dataset="customers", format=fmt, since=since)).rows == rows


@pytest.mark.parametrize(
    ("fmt", "since", "stall_at"),
    [("csv", None, 1), ("jsonl", None, 3), ("jsonl", "2000-01-01T00:00:00Z", 3)],
)
async def test_a_cancelled_export_leaves_nothing_behind(
    app: AppContext,
    engine: AsyncEngine,
    small_batches: None,
    fmt: str,
    since: str | None,
    stall_at: int,
) -> None:
    rows = await seed_wide(engine)
    directory = app.settings.export_dir / "customers"
    started = asyncio.Event()

    async def stall(n: int) -> None:
        if n == stall_at:
            started.set()
            await asyncio.sleep(30)

    run = HookRun(app=app, job_id=uuid.uuid4().hex, job_try=1, hook=stall)
    task = asyncio.create_task(export(app, run, dataset="customers", format=fmt, since=since))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert listing(directory) == []
    assert (await export(app, dataset="customers", format=fmt, since=since)).rows == rows


@pytest.mark.parametrize(("fmt", "since"), READINGS)
async def test_rows_committed_during_the_export_are_not_in_it(
    app: AppContext, engine: AsyncEngine, small_batches: None, fmt: str, since: str | None
) -> None:
    await seed_wide(engine)
    expected = await db_rows(engine, "customers")
    inserted: list[int] = []

    async def meddle(n: int) -> None:
        # From another connection, committed: a new row, a changed row, a deleted row. The first
        # call comes once the snapshot is taken, the next ones after each batch or chunk.
        i = 100 + len(inserted)
        async with engine.begin() as conn:
            await conn.execute(insert(tables.customers), [customer(i, updated=T0)])
            await conn.execute(
                text("update customers set full_name = 'changed' where external_id = 'C00052'")
            )
            await conn.execute(text("delete from accounts where customer_external_id = 'C00001'"))
            await conn.execute(text("delete from customers where external_id = 'C00001'"))
        inserted.append(i)

    run = HookRun(app=app, job_id=uuid.uuid4().hex, job_try=1, hook=meddle)
    result = await export(app, run, dataset="customers", format=fmt, since=since)
    assert run.calls >= (2 if fmt == "csv" else 10)  # JSON Lines: after each of many batches
    assert read_rows(Path(result.path), "customers") == expected
    assert result.rows == len(expected) == 52
    # the changes were committed: an export now sees them
    names = {row["external_id"]: row["full_name"] for row in await db_rows(engine, "customers")}
    assert "C00001" not in names
    assert names["C00052"] == "changed"
    assert {f"C{i:05d}" for i in inserted} <= set(names)


async def test_both_jsonl_readings_write_the_same_lines(
    app: AppContext, engine: AsyncEngine, small_batches: None
) -> None:
    rows = await seed_wide(engine)
    by_pages = await export(app, dataset="customers", format="jsonl")
    by_rows = await export(app, dataset="customers", format="jsonl", since="1970-01-01T00:00:00Z")
    lines = [sorted(read_bytes(Path(r.path)).decode().splitlines()) for r in (by_pages, by_rows)]
    assert lines[0] == lines[1]
    assert len(lines[0]) == by_pages.rows == by_rows.rows == rows


async def test_an_empty_table_gives_an_empty_file(app: AppContext, engine: AsyncEngine) -> None:
    jsonl = await export(app, dataset="transfers", format="jsonl", compress=True)
    assert (jsonl.rows, read_bytes(Path(jsonl.path))) == (0, b"")
    csv_ = await export(app, dataset="transfers", format="csv")
    columns = get_dataset("transfers").export_columns  # the ledger's columns, in table order
    assert columns[:6] == (
        "id",
        "from_account_id",
        "to_account_id",
        "amount_cents",
        "status",
        "reason",
    )
    assert (csv_.rows, read_bytes(Path(csv_.path))) == (0, (",".join(columns) + "\n").encode())


async def test_the_snapshot_is_repeatable_read_read_only_utc(engine: AsyncEngine) -> None:
    async with snapshot(create_sessionmaker(engine)) as snap:
        settings = [
            (await snap.conn.execute(text(f"show {name}"))).scalar_one()
            for name in ("transaction_isolation", "transaction_read_only", "timezone")
        ]
        assert settings == ["repeatable read", "on", "UTC"]
        assert snap.taken_at.tzinfo is not None
    # the pooled connection is handed to the next user as an ordinary one
    async with engine.connect() as conn:
        assert (await conn.execute(text("show transaction_read_only"))).scalar_one() == "off"
        assert (await conn.execute(text("show transaction_isolation"))).scalar_one() == (
            "read committed"
        )


async def test_a_symlink_out_of_the_export_dir_is_refused(
    app: AppContext, engine: AsyncEngine, tmp_path: Path
) -> None:
    await seed_customers(engine, [customer(1)])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    app.settings.export_dir.mkdir()
    (app.settings.export_dir / "customers").symlink_to(outside)
    with pytest.raises(PathNotAllowed, match="outside"):
        await export(app, dataset="customers")
    assert listing(outside) == []


async def test_export_through_the_real_worker(
    settings: Settings, redis: ArqRedis, engine: AsyncEngine, clean_db: None
) -> None:
    await seed_all(engine)
    job = await redis.enqueue_job(
        "export_dataset",
        dataset="customers",
        format="jsonl",
        compress=True,
        since=(T0 + timedelta(days=10)).isoformat(),
        _queue_name=settings.queue_name,
    )
    assert job is not None
    worker = await run_burst(settings, redis)
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    result = await Job(
        job.job_id, redis, _queue_name=settings.queue_name, _deserializer=redis.job_deserializer
    ).result(timeout=5)
    path = Path(result["path"])
    assert path.name.endswith(f"-{job.job_id[:8]}.jsonl.gz")
    assert result == {
        "dataset": "customers",
        "path": str(path),
        "rows": 3,
        "bytes": len(read_raw(path)),
        "sha256": hashlib.sha256(read_raw(path)).hexdigest(),
        "format": "jsonl",
        "compressed": True,
        "incremental": None,
    }


# A whole-table JSON Lines export reads on a helper connection too, in the same snapshot
# (jobs/exports/pages.py); these tests hold the snapshot's own reader back until the helper has
# read, so that both read whatever the timing.


def two_readers(monkeypatch: pytest.MonkeyPatch, *, before: Any = None) -> list[int]:
    """Spy on each segment's reader (its connection's id, in reading order); the snapshot's own
    reader runs `before()` and then waits for a helper to read before it reads anything."""
    monkeypatch.setattr(export_pages, "READERS", 2)
    seen: list[int] = []
    helped = asyncio.Event()
    original = export_pages._Segments.read

    async def read(self: Any, conn: Any, index: int) -> None:
        seen.append(id(conn))
        if index == 0:  # the snapshot's own reader claims first
            if before is not None:
                await before()
            await asyncio.wait_for(helped.wait(), 15)
        elif id(conn) != seen[0]:
            helped.set()
        await original(self, conn, index)

    monkeypatch.setattr(export_pages._Segments, "read", read)
    return seen


async def test_two_readers_write_what_one_writes_from_one_snapshot(
    app: AppContext, engine: AsyncEngine, small_batches: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = await seed_wide(engine)
    monkeypatch.setattr(export_pages, "READERS", 1)
    alone = await export(app, dataset="customers", format="jsonl")

    async def change_everything() -> None:  # committed after the snapshot was taken
        async with engine.begin() as conn:
            await conn.execute(text("update customers set full_name = 'changed'"))
        await seed_customers(engine, [customer(i) for i in range(100, 110)])

    seen = two_readers(monkeypatch, before=change_everything)
    both = await export(app, dataset="customers", format="jsonl")
    assert len(set(seen)) == 2 and len(seen) >= 10
    assert both.rows == alone.rows == rows
    assert read_bytes(Path(both.path)) == read_bytes(Path(alone.path))


async def test_a_helper_that_cannot_start_leaves_the_reading_to_the_snapshot(
    app: AppContext, engine: AsyncEngine, small_batches: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = await seed_wide(engine)
    monkeypatch.setattr(export_pages, "READERS", 2)

    def no_helper(snap: Any) -> Any:
        @contextlib.asynccontextmanager
        async def join(snapshot_id: str) -> Any:
            raise ConnectionRefusedError("no connection to be had")
            yield

        return join

    monkeypatch.setattr(export_stream, "joiner", no_helper)
    result = await export(app, dataset="customers", format="jsonl")
    assert result.rows == rows
    lines = read_bytes(Path(result.path)).decode().splitlines()
    assert [json.loads(line)["external_id"] for line in lines] == [
        f"C{i:05d}" for i in range(1, 53)
    ]


async def test_a_helper_failing_midway_fails_the_export_and_leaves_nothing(
    app: AppContext, engine: AsyncEngine, small_batches: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = await seed_wide(engine)
    seen = two_readers(monkeypatch)
    original = export_pages._Segments.read

    async def fail_on_the_helper(self: Any, conn: Any, index: int) -> None:
        await original(self, conn, index)
        if id(conn) != seen[0]:  # the helper, after its first segment
            raise RuntimeError("helper lost")

    monkeypatch.setattr(export_pages._Segments, "read", fail_on_the_helper)
    with pytest.raises(RuntimeError, match="helper lost"):
        await export(app, dataset="customers", format="jsonl")
    assert listing(app.settings.export_dir / "customers") == []
    monkeypatch.undo()
    assert (await export(app, dataset="customers", format="jsonl")).rows == rows
