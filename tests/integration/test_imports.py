from __future__ import annotations

import asyncio
import gzip
import hashlib
import random
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.jobs import Job
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.errors import TooManyRejects
from jobs.imports import copying, csvinput, merge
from jobs.imports import job as imports
from jobs.imports.job import import_file, import_id_for
from jobs.models import ImportFilePayload
from jobs.validation import parse_timestamp
from tests.support.import_files import (
    ACCOUNT_HEADER,
    CUSTOMER_HEADER,
    count,
    customer_line,
    rejects,
    rows,
    run_import,
    write,
)
from tests.support.worker_helpers import run_burst
from worker.context import AppContext
from worker.runner import RunHandle
from worker.settings import Settings

CUSTOMERS = "select external_id, email, full_name, country, created_at from customers order by 1"


async def test_insert_loads_valid_rows_and_quarantines_the_rest(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine
) -> None:
    write(
        settings,
        "c.csv",
        CUSTOMER_HEADER,
        customer_line(1),
        b"c2, Bob@Example.COM ,Bob,de,2020-01-02T01:00:00+01:00",
        customer_line(3, email="not-an-email"),
        b"c4,dan@example.com,Dan,GB",
        customer_line(5, country="GBR"),
        customer_line(6, created_at=""),
    )
    result = await run_import(ctx, path="c.csv", mode="insert", max_reject_ratio=0.5)
    assert result == {
        "import_id": str(import_id_for(ctx["job_id"])),
        "dataset": "customers",
        "rows_read": 6,
        "inserted": 3,
        "updated": 0,
        "skipped": 0,
        "rejected": 3,
    }
    stored = await rows(engine, CUSTOMERS)
    assert [r[:4] for r in stored] == [
        ("c000001", "user1@example.com", "Customer 1", "GB"),
        ("c000006", "user6@example.com", "Customer 6", "GB"),
        ("c2", "bob@example.com", "Bob", "DE"),
    ]
    assert stored[2][4] == datetime(2020, 1, 2, tzinfo=UTC)
    now = (await rows(engine, "select max(finished_at) from import_runs"))[0][0]
    assert abs((stored[1][4] - now).total_seconds()) < 60  # empty created_at: the import's now
    assert await rejects(engine) == [
        (
            4,
            "email: must hold exactly one @ with a name before it",
            customer_line(3, email="not-an-email").decode(),
        ),
        (5, "has 4 fields; the header has 5", "c4,dan@example.com,Dan,GB"),
        (6, "country: must be 2 ASCII letters", customer_line(5, country="GBR").decode()),
    ]
    assert await rows(
        engine, "select distinct import_id::text, dataset, file from import_rejects"
    ) == [(result["import_id"], "customers", "c.csv")]


async def test_import_run_is_recorded_with_the_file_digest(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine
) -> None:
    path = write(settings, "sub/c.csv.gz", CUSTOMER_HEADER, customer_line(1), customer_line(2))
    result = await run_import(ctx, path="sub/c.csv.gz")
    assert (result["rows_read"], result["inserted"]) == (2, 2)
    assert await rows(
        engine,
        "select import_id::text, dataset, file, sha256, mode, rows_read, inserted, updated,"
        " skipped, rejected from import_runs",
    ) == [
        (
            result["import_id"],
            "customers",
            "sub/c.csv.gz",
            hashlib.sha256(path.read_bytes()).hexdigest(),
            "upsert",
            2,
            2,
            0,
            0,
            0,
        )
    ]


async def test_upsert_counts_inserted_and_updated_and_reimport_changes_nothing(
    ctx: dict[str, Any], app: AppContext, settings: Settings, engine: AsyncEngine
) -> None:
    write(settings, "old.csv", CUSTOMER_HEADER, customer_line(1, full_name="Old"), customer_line(2))
    await run_import(ctx, path="old.csv", mode="insert")
    write(settings, "new.csv", CUSTOMER_HEADER, *(customer_line(i) for i in (1, 2, 3)))

    first = await run_import(job_ctx(app), path="new.csv")
    assert (first["inserted"], first["updated"], first["skipped"]) == (1, 1, 1)
    before = await rows(engine, "select *, xmin::text from customers order by id")
    assert [r[3] for r in before] == ["Customer 1", "Customer 2", "Customer 3"]

    # The same file again: every row is unchanged, counted as skipped, and nothing is rewritten
    # (updated_at and even the row versions stay as they were).
    again = await run_import(job_ctx(app), path="new.csv")
    assert (again["inserted"], again["updated"], again["skipped"]) == (0, 0, 3)
    assert await rows(engine, "select *, xmin::text from customers order by id") == before


async def test_upsert_without_statistics_counts_through_on_conflict(
    ctx: dict[str, Any],
    app: AppContext,
    settings: Settings,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With track_counts off MERGE's counts cannot be read: ON CONFLICT ... RETURNING instead."""

    async def untracked(conn: Any) -> bool:
        return False

    monkeypatch.setattr(merge, "_counts_tracked", untracked)
    write(settings, "old.csv", CUSTOMER_HEADER, customer_line(1, full_name="Old"), customer_line(2))
    await run_import(ctx, path="old.csv", mode="insert")
    write(
        settings,
        "new.csv",
        CUSTOMER_HEADER,
        customer_line(3, full_name="Early"),
        *(customer_line(i) for i in (1, 2, 3)),
    )
    result = await run_import(job_ctx(app), path="new.csv")
    assert (result["inserted"], result["updated"], result["skipped"]) == (1, 1, 2)
    assert [r[2] for r in await rows(engine, CUSTOMERS)] == [
        "Customer 1",
        "Customer 2",
        "Customer 3",
    ]


async def test_a_key_inserted_meanwhile_by_another_session_is_updated(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine
) -> None:
    write(settings, "c.csv", CUSTOMER_HEADER, customer_line(1), customer_line(2))
    async with engine.connect() as other:
        await other.execute(text("begin"))
        await other.execute(
            text(
                "insert into customers (external_id, email, full_name, country, created_at)"
                " values ('c000002', 'other@example.com', 'Other', 'DE', now())"
            )
        )
        job = asyncio.create_task(run_import(ctx, path="c.csv"))
        await asyncio.sleep(0.5)
        assert not job.done()  # waiting on the other session's new key
        await other.execute(text("commit"))
    result = await job
    assert (result["inserted"], result["updated"]) == (1, 1)
    assert [r[:3] for r in await rows(engine, CUSTOMERS)] == [
        ("c000001", "user1@example.com", "Customer 1"),
        ("c000002", "user2@example.com", "Customer 2"),
    ]


async def test_insert_mode_skips_keys_already_present(
    ctx: dict[str, Any], app: AppContext, settings: Settings, engine: AsyncEngine
) -> None:
    write(settings, "a.csv", CUSTOMER_HEADER, customer_line(1, full_name="First"))
    await run_import(ctx, path="a.csv", mode="insert")
    write(
        settings, "b.csv", CUSTOMER_HEADER, customer_line(1, full_name="Second"), customer_line(2)
    )
    result = await run_import(job_ctx(app), path="b.csv", mode="insert")
    assert (result["inserted"], result["updated"], result["skipped"]) == (1, 0, 1)
    assert [r[2] for r in await rows(engine, CUSTOMERS)] == ["First", "Customer 2"]


@pytest.mark.parametrize("mode", ["insert", "upsert"])
async def test_last_occurrence_of_a_key_wins(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine, mode: str
) -> None:
    write(
        settings,
        "dups.csv",
        CUSTOMER_HEADER,
        customer_line(1, full_name="One"),
        customer_line(2),
        customer_line(1, full_name="Two"),
        customer_line(1, full_name="Bad", email="nope"),  # rejected: the last valid one wins
    )
    result = await run_import(ctx, path="dups.csv", mode=mode, max_reject_ratio=0.5)
    assert (result["rows_read"], result["inserted"], result["skipped"], result["rejected"]) == (
        4,
        2,
        1,
        1,
    )
    assert [r[2] for r in await rows(engine, CUSTOMERS)] == ["Two", "Customer 2"]


async def test_empty_created_at_is_now_for_new_rows_and_kept_for_stored_ones(
    ctx: dict[str, Any], app: AppContext, settings: Settings, engine: AsyncEngine
) -> None:
    write(settings, "a.csv", CUSTOMER_HEADER, customer_line(1, created_at="2001-01-01"))
    await run_import(ctx, path="a.csv")
    write(
        settings,
        "b.csv",
        CUSTOMER_HEADER,
        customer_line(1, created_at="", full_name="Renamed"),
        customer_line(2, created_at=""),
        customer_line(3, created_at="2003-03-03"),
    )
    result = await run_import(job_ctx(app), path="b.csv")
    assert (result["inserted"], result["updated"]) == (2, 1)
    stored = {r[0]: r for r in await rows(engine, CUSTOMERS)}
    assert stored["c000001"][2:] == ("Renamed", "GB", datetime(2001, 1, 1, tzinfo=UTC))
    assert stored["c000003"][4] == datetime(2003, 3, 3, tzinfo=UTC)
    assert stored["c000002"][4] > datetime(2026, 1, 1, tzinfo=UTC)

    # A file without the column at all behaves the same.
    write(
        settings, "c.csv", b"external_id,email,full_name,country", b"c000001,x@example.com,Ada,GB"
    )
    result = await run_import(job_ctx(app), path="c.csv")
    assert result["updated"] == 1
    stored = {r[0]: r for r in await rows(engine, CUSTOMERS)}
    assert stored["c000001"][1:] == ("x@example.com", "Ada", "GB", datetime(2001, 1, 1, tzinfo=UTC))


async def test_accounts_naming_no_customer_are_rejected_with_their_lines(
    ctx: dict[str, Any], app: AppContext, settings: Settings, engine: AsyncEngine
) -> None:
    write(settings, "c.csv", CUSTOMER_HEADER, customer_line(1))
    await run_import(ctx, path="c.csv")
    write(
        settings,
        "a.csv",
        ACCOUNT_HEADER,
        b"1,c000001,eur,100",
        b'2,"nobody\nat all",EUR,5',  # line 3, spanning line 4
        b"3,,USD,0",
        b"4,ghost,USD,0\r",  # line 6
        b"5,c000001,USD,-1",
    )
    result = await run_import(job_ctx(app), dataset="accounts", path="a.csv", max_reject_ratio=1)
    assert result["rows_read"] == 5
    assert (result["inserted"], result["rejected"]) == (2, 3)
    assert await rows(
        engine, "select id, customer_external_id, currency, balance_cents from accounts order by id"
    ) == [(1, "c000001", "EUR", 100), (3, None, "USD", 0)]
    reason = "customer_external_id: no row in customers has this external_id"
    assert await rejects(engine) == [
        (3, reason, '2,"nobody\nat all",EUR,5'),
        (6, reason, "4,ghost,USD,0"),
        (7, "balance_cents: must be >= 0", "5,c000001,USD,-1"),
    ]


async def test_too_many_rejects_loads_nothing_and_says_why(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine
) -> None:
    lines = [customer_line(i) for i in range(1, 20)] + [customer_line(99, email="x")]
    lines += [customer_line(100, country="")]
    write(settings, "c.csv", CUSTOMER_HEADER, *lines)
    import_id = import_id_for(ctx["job_id"])
    with pytest.raises(TooManyRejects) as caught:
        await run_import(ctx, path="c.csv", mode="insert")
    assert str(caught.value) == (
        "c.csv: 2 of 21 rows rejected (9.5%), more than max_reject_ratio=0.05 allows; nothing "
        "was loaded. line 21: email: must hold exactly one @ with a name before it; line 22: "
        f"country: required. The first 2 are in import_rejects under import_id {import_id}"
    )
    assert await count(engine, "customers") == 0
    assert await count(engine, "import_runs") == 0
    assert [r[:2] for r in await rejects(engine)] == [
        (21, "email: must hold exactly one @ with a name before it"),
        (22, "country: required"),
    ]
    # Within the ratio, the same file loads.
    result = await run_import(ctx, path="c.csv", mode="insert", max_reject_ratio=0.1)
    assert (result["inserted"], result["rejected"]) == (19, 2)
    assert len(await rejects(engine)) == 2  # the same import id: replaced, not added


async def test_a_retry_of_a_committed_import_returns_the_recorded_result(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine
) -> None:
    write(settings, "c.csv", CUSTOMER_HEADER, customer_line(1), customer_line(2, email="bad"))
    first = await run_import(ctx, path="c.csv", mode="insert", max_reject_ratio=0.5)
    retry = await run_import(
        {**ctx, "job_try": 2}, path="c.csv", mode="insert", max_reject_ratio=0.5
    )
    assert retry == first
    assert len(await rejects(engine)) == 1
    assert await count(engine, "import_runs") == 1


async def test_nothing_is_visible_from_another_session_until_the_import_commits(
    app: AppContext, settings: Settings, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small reads and batches: many COPYs, and a look from outside after each block.
    monkeypatch.setattr(copying, "BATCH_BYTES", 4096)
    monkeypatch.setattr(csvinput, "READ_BYTES", 4096)
    write(settings, "c.csv", CUSTOMER_HEADER, *(customer_line(i) for i in range(2000)))
    seen: list[int] = []

    class Watched(RunHandle):
        async def progress(self, **counters: int) -> None:
            seen.append(await count(engine, "customers"))

    run = Watched(app=app, job_id="watched", job_try=1)
    result = await import_file.impl(run, ImportFilePayload(dataset="customers", path="c.csv"))
    assert result.inserted == 2000
    assert len(seen) > 20
    assert set(seen) == {0}
    assert await count(engine, "customers") == 2000


@pytest.mark.parametrize("mode", ["insert", "upsert"])
async def test_a_file_failing_late_leaves_nothing(
    ctx: dict[str, Any],
    settings: Settings,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    monkeypatch.setattr(copying, "BATCH_BYTES", 4096)
    path = write(settings, "c.csv.gz", CUSTOMER_HEADER, *(customer_line(i) for i in range(5000)))
    path.write_bytes(path.read_bytes()[:-12])  # the end of the gzip stream is missing
    with pytest.raises(Exception, match="the gzip data ends early"):
        await run_import(ctx, path="c.csv.gz", mode=mode)
    assert await count(engine, "customers") == 0
    assert await count(engine, "import_rejects") == 0
    assert await count(engine, "import_runs") == 0


@pytest.mark.parametrize("read_bytes", [len(CUSTOMER_HEADER) + 1, 7, 1])
async def test_reads_of_any_size_give_the_same_import(
    ctx: dict[str, Any],
    settings: Settings,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    read_bytes: int,
) -> None:
    """The first read may end right after the header, or anywhere in a line."""
    monkeypatch.setattr(csvinput, "READ_BYTES", read_bytes)
    write(settings, "c.csv.gz", CUSTOMER_HEADER, customer_line(1), customer_line(2, country="x"))
    result = await run_import(ctx, path="c.csv.gz", max_reject_ratio=0.5)
    assert (result["rows_read"], result["inserted"], result["rejected"]) == (2, 1, 1)
    assert await rejects(engine) == [
        (3, "country: must be 2 ASCII letters", customer_line(2, country="x").decode())
    ]


async def test_progress_is_reported_while_a_long_import_runs(
    app: AppContext, settings: Settings
) -> None:
    write(settings, "c.csv", CUSTOMER_HEADER, *(customer_line(i) for i in range(3000)))
    calls: list[dict[str, int]] = []

    class Counting(RunHandle):
        async def progress(self, **counters: int) -> None:
            calls.append(counters)

    await import_file.impl(
        Counting(app=app, job_id="counting", job_try=1),
        ImportFilePayload(dataset="customers", path="c.csv"),
    )
    assert calls and calls[-1]["rows"] == 3000


async def test_import_through_the_real_worker(
    settings: Settings, redis: ArqRedis, engine: AsyncEngine, clean_db: None
) -> None:
    write(settings, "c.csv", CUSTOMER_HEADER, customer_line(1), customer_line(2, email="bad"))
    job = await redis.enqueue_job(
        "import_file",
        dataset="customers",
        path="c.csv",
        max_reject_ratio=0.5,
        _queue_name=settings.queue_name,
    )
    assert job is not None
    worker = await run_burst(settings, redis)
    assert worker.jobs_complete == 1
    result = await Job(
        job.job_id, redis, _queue_name=settings.queue_name, _deserializer=redis.job_deserializer
    ).result(timeout=5)
    assert result["import_id"] == str(import_id_for(job.job_id))
    assert (result["inserted"], result["rejected"]) == (1, 1)
    assert await count(engine, "customers") == 1


# Both ways agree: clean lines that skip Python's checks load exactly what the rules would.


def messy_customers(rng: random.Random, n: int) -> list[bytes]:
    choices = [
        lambda i: customer_line(i),
        lambda i: customer_line(i, email=f" USER{i}@Example.com "),
        lambda i: customer_line(i, country="de"),
        lambda i: customer_line(i, email="broken"),
        lambda i: customer_line(i, created_at=""),
        lambda i: customer_line(i, created_at="2024-02-29T23:30:00-01:00"),
        lambda i: customer_line(i, created_at="2023-02-29"),
        lambda i: customer_line(i, full_name='"Ritchie, Jr."'),
        lambda i: customer_line(i, full_name='"two\nlines"'),
        lambda i: customer_line(i, full_name="Zo\u00eb").replace(b"Zo\xc3\xab", b"Zo\xeb"),
        lambda i: customer_line(i)[:-5],
        lambda i: customer_line(i % 7),  # repeated keys
    ]
    return [rng.choice(choices)(i) for i in range(n)]


@pytest.mark.parametrize("mode", ["insert", "upsert"])
async def test_the_fast_path_and_the_rules_load_the_same(
    app: AppContext,
    settings: Settings,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    rng = random.Random(7)
    write(settings, "seed.csv", CUSTOMER_HEADER, *(customer_line(i) for i in range(0, 300, 3)))
    write(settings, "messy.csv", CUSTOMER_HEADER, *messy_customers(rng, 600))
    outcomes = []
    for fast in (True, False):
        monkeypatch.setattr(imports, "FAST_PATH", fast)
        async with engine.begin() as conn:
            await conn.execute(text("truncate customers, import_rejects, import_runs cascade"))
        await run_import(job_ctx(app), path="seed.csv", mode="insert")
        result = await run_import(job_ctx(app), path="messy.csv", mode=mode, max_reject_ratio=1)
        outcomes.append(
            (
                {k: v for k, v in result.items() if k != "import_id"},
                # Rows whose created_at is the import's now differ in that alone.
                await rows(
                    engine, CUSTOMERS.replace("order", "where created_at < '2026-01-01' order")
                ),
                await rows(engine, "select count(*) from customers"),
                await rejects(engine),
            )
        )
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0]["rejected"] > 50


async def test_clean_timestamps_mean_the_same_to_postgresql_and_to_the_rules(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine
) -> None:
    stamps = [
        "2020-01-01", "2020-01-01T10:00", "2020-01-01 10:00:30", "2020-01-01T10:00:30.5",
        "2020-01-01T10:00:30.123456Z", "2020-06-30T23:59:59+14:00", "2020-06-30T00:00:00-12",
        "2020-06-30T00:00:00+0530", "2000-02-29T12:00:00-00:00", "0002-01-01T00:00:00+01:00",
        "9998-12-31T23:59:59.999999-09:30", "1900-03-01 00:00:00Z",
    ]  # fmt: skip
    write(
        settings,
        "t.csv",
        CUSTOMER_HEADER,
        *(customer_line(i, created_at=s) for i, s in enumerate(stamps)),
    )
    await run_import(ctx, path="t.csv")
    stored = [r[4] for r in await rows(engine, CUSTOMERS)]
    assert stored == [parse_timestamp(s, "created_at") for s in stamps]


def job_ctx(app: AppContext) -> dict[str, Any]:
    from worker.context import CTX_KEY

    return {CTX_KEY: app, "job_id": f"test-{uuid.uuid4().hex[:8]}", "job_try": 1}


async def test_gzip_detected_by_content(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine
) -> None:
    (settings.import_dir / "plain-name.csv").write_bytes(
        gzip.compress(CUSTOMER_HEADER + b"\n" + customer_line(1) + b"\n")
    )
    result = await run_import(ctx, path="plain-name.csv")
    assert result["inserted"] == 1
    assert await asyncio.wait_for(count(engine, "customers"), 5) == 1
