"""`transfer_funds` jobs running at the same time: no deadlock, no double spend, no lost money.

Each job runs under its own arq job id (`another_job`) unless a test says otherwise: two runs of
one job id are a replay, which reports what the first run recorded.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

import jobs.transfers.job
from jobs.models import TransferItem
from jobs.transfers.job import transfer_funds
from jobs.transfers.ledger import LARGE_BATCH_ACCOUNTS, LARGE_BATCH_LOCK
from jobs.transfers.plan import ALREADY_RECORDED, ID_REUSED, accounts_to_lock
from tests.integration.test_group_commit import books, check_books
from tests.integration.test_transfers import (
    another_job,
    balances,
    connect,
    ledger,
    seed_accounts,
    transfer,
    writers,
)
from worker.runner import execute


@pytest.fixture
async def observer(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(database_url)
    yield conn
    await conn.close()


def _items(batch: list[dict[str, Any]]) -> list[TransferItem]:
    return [TransferItem.model_validate(t) for t in batch]


async def wait_for_lock_wait(conn: asyncpg.Connection) -> None:
    """Return once a worker connection of this database waits for a lock."""
    for _ in range(500):
        waiting = await conn.fetchval(
            "select count(*) from pg_stat_activity"
            " where datname = current_database() and application_name = 'etl-worker'"
            " and wait_event_type = 'Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the job never waited for a lock")


async def test_concurrent_overlapping_batches_and_replays_keep_every_invariant(
    ctx: dict[str, Any], engine: AsyncEngine, observer: asyncpg.Connection
) -> None:
    rng = random.Random(8)
    accounts = dict.fromkeys(range(1, 101), ("EUR", 1_000))
    await seed_accounts(engine, accounts)
    # Small batches (a few accounts, locked row by row) meet large ones (queued first).
    sizes = [5, 20, 300, 150, 10, 400, 250, 30]
    batches = [
        [transfer(*rng.sample(range(1, 101), 2), rng.randrange(1, 700)) for _ in range(size)]
        for size in sizes
    ]
    assert sum(len(accounts_to_lock(_items(b))) > LARGE_BATCH_ACCOUNTS for b in batches) == 4
    # The same transfers in two batches at once: one job applies them, the other finds them.
    shared = [transfer(1, 2, 5), transfer(3, 4, 5), transfer(40, 39, 5)]
    batches[0] += shared
    batches[5] = shared + batches[5]

    # Every batch twice, all at once: the replays race the originals.
    results = await asyncio.gather(
        *(execute(transfer_funds, another_job(ctx), transfers=batch) for batch in batches + batches)
    )

    final = await balances(observer)
    recorded = await ledger(observer)
    assert sum(final.values()) == 100 * 1_000
    assert min(final.values()) >= 0
    # Each id has one outcome that counts; every other sighting of it is a duplicate.
    counted: Counter[str] = Counter()
    for batch, result in zip(batches + batches, results, strict=True):
        assert [r["id"] for r in result["results"]] == [t["id"] for t in batch]
        for outcome in result["results"]:
            status, reason = recorded[UUID(outcome["id"])][3:]
            if outcome["status"] == "duplicate":
                assert outcome["reason"] == ALREADY_RECORDED
                # The id's recorded outcome, whichever job recorded it.
                assert (outcome["recorded_status"], outcome.get("recorded_reason")) == (
                    status,
                    reason,
                )
            else:
                counted[outcome["id"]] += 1
                assert (outcome["status"], outcome["reason"]) == (status, reason)
    all_ids = {t["id"] for batch in batches for t in batch}
    assert counted == Counter(all_ids)
    assert {str(key) for key in recorded} == all_ids
    # The balances are exactly what the applied ledger rows add up to.
    expected = dict.fromkeys(accounts, 1_000)
    for source, target, amount, status, _ in recorded.values():
        if status == "applied":
            expected[source] -= amount
            expected[target] += amount
    assert final == expected
    assert sum(r["applied"] for r in results) == sum(
        1 for row in recorded.values() if row[3] == "applied"
    )


async def test_ids_another_job_records_meanwhile_are_judged_by_its_rows(
    ctx: dict[str, Any],
    engine: AsyncEngine,
    observer: asyncpg.Connection,
    database_url: str,
) -> None:
    """The batch's insert meets another job's rows on the ledger key: it falls back, reads them.

    One carries the same content (a duplicate, with that job's outcome), one other accounts (the
    id reused with different content: rejected, and the other job's row stays).
    """
    await seed_accounts(engine, {1: ("EUR", 100), 2: ("EUR", 0), 3: ("EUR", 0)})
    same, reused = transfer(1, 2, 10), transfer(1, 2, 15)
    batch = [same, reused, transfer(1, 2, 20)]
    other = await connect(database_url)
    try:
        with capture_logs() as logs:
            async with other.transaction():
                # Another job records the two ids, and has not committed yet.
                await other.executemany(
                    "insert into transfers"
                    " (id, from_account_id, to_account_id, amount_cents, status, reason, job_id)"
                    " values ($1, $2, $3, $4, 'rejected', 'why', 'other-job')",
                    [(UUID(same["id"]), 1, 2, 10), (UUID(reused["id"]), 3, 1, 15)],
                )
                job = asyncio.create_task(
                    execute(transfer_funds, another_job(ctx), transfers=batch)
                )
                await wait_for_lock_wait(observer)  # the job's insert waits on the ledger key
            result = await job
    finally:
        await other.close()

    assert result["results"] == [
        {
            "id": same["id"],
            "status": "duplicate",
            "reason": ALREADY_RECORDED,
            "recorded_status": "rejected",
            "recorded_reason": "why",
        },
        {"id": reused["id"], "status": "rejected", "reason": ID_REUSED},
        {"id": batch[2]["id"], "status": "applied", "reason": None},
    ]
    assert [entry["event"] for entry in logs if entry["log_level"] == "warning"] == [
        "transfers.fallback"
    ]
    assert await balances(observer) == {1: 80, 2: 20, 3: 0}
    recorded = await ledger(observer)
    assert recorded[UUID(same["id"])] == (1, 2, 10, "rejected", "why")
    assert recorded[UUID(reused["id"])] == (3, 1, 15, "rejected", "why")


async def test_an_id_recorded_between_the_fallback_read_and_its_write_is_judged_by_that_row(
    ctx: dict[str, Any],
    engine: AsyncEngine,
    observer: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The one-by-one write meets the ledger key: it reads that one row and asks the rules."""
    await seed_accounts(engine, {1: ("EUR", 100), 2: ("EUR", 0)})
    taken = transfer(1, 2, 10)
    await execute(transfer_funds, another_job(ctx), transfers=[taken])
    read = jobs.transfers.job.recorded_transfers

    async def miss_it_for_the_batch(driver: Any, transfers: Any) -> Any:
        # As if the other job committed just after each read of the whole batch.
        return {} if len(transfers) > 1 else await read(driver, transfers)

    monkeypatch.setattr(jobs.transfers.job, "recorded_transfers", miss_it_for_the_batch)
    batch = [transfer(1, 2, 5), taken]
    with capture_logs() as logs:
        result = await execute(transfer_funds, another_job(ctx), transfers=batch)

    assert [(r["status"], r["reason"], r.get("recorded_status")) for r in result["results"]] == [
        ("applied", None, None),
        ("duplicate", ALREADY_RECORDED, "applied"),
    ]
    assert [entry["event"] for entry in logs if entry["log_level"] == "warning"] == [
        "transfers.fallback"
    ]
    assert await balances(observer) == {1: 85, 2: 15}


async def test_a_deadlock_is_retried_and_the_job_succeeds(
    ctx: dict[str, Any],
    engine: AsyncEngine,
    observer: asyncpg.Connection,
    database_url: str,
) -> None:
    """Another writer that locks accounts in the opposite order: PostgreSQL picks the job."""
    await seed_accounts(engine, {1: ("EUR", 100), 2: ("EUR", 0)})
    batch = [transfer(1, 2, 10)]
    other = await connect(database_url)
    try:
        # The other writer waits longer before checking for deadlocks, so the job is the victim.
        await other.execute("set deadlock_timeout = '20s'")
        with capture_logs() as logs:
            async with other.transaction():
                await other.execute("select 1 from accounts where id = 2 for update")
                job = asyncio.create_task(execute(transfer_funds, ctx, transfers=batch))
                await wait_for_lock_wait(observer)  # the job holds account 1, waits for 2
                await other.execute("select 1 from accounts where id = 1 for update")
            result = await job
    finally:
        await other.close()

    assert result["results"] == [{"id": batch[0]["id"], "status": "applied", "reason": None}]
    retries = [entry for entry in logs if entry["event"] == "transfers.retry"]
    assert [(entry["attempt"], entry["sqlstate"]) for entry in retries] == [(1, "40P01")]
    assert await balances(observer) == {1: 90, 2: 10}
    assert list(await ledger(observer)) == [UUID(batch[0]["id"])]


async def test_a_replay_waiting_for_the_original_finds_everything_recorded(
    ctx: dict[str, Any], engine: AsyncEngine, observer: asyncpg.Connection
) -> None:
    """The replay waits for the accounts, then reads the ledger afresh: all duplicates."""
    await seed_accounts(engine, {1: ("EUR", 1_000), 2: ("EUR", 0)})
    batch = [transfer(1, 2, 1) for _ in range(100)] + [transfer(2, 1, 0, uuid4())]
    with capture_logs() as logs:
        first, replay = await asyncio.gather(
            execute(transfer_funds, another_job(ctx), transfers=batch),
            execute(transfer_funds, another_job(ctx), transfers=batch),
        )
    assert sorted([first["duplicate"], replay["duplicate"]]) == [0, 101]
    assert sorted([first["applied"], replay["applied"]]) == [0, 100]
    assert not [entry for entry in logs if entry["log_level"] == "warning"]
    assert await balances(observer) == {1: 900, 2: 100}


async def test_the_same_job_run_twice_at_once_reports_one_outcome_twice(
    ctx: dict[str, Any], engine: AsyncEngine, observer: asyncpg.Connection
) -> None:
    """A stalled worker's job, run again by another worker under the same job id meanwhile."""
    await seed_accounts(engine, {1: ("EUR", 1_000), 2: ("EUR", 0)})
    batch = [transfer(1, 2, 1) for _ in range(100)] + [transfer(2, 1, 0)]
    first, second = await asyncio.gather(
        execute(transfer_funds, ctx, transfers=batch),
        execute(transfer_funds, {**ctx, "job_try": 2}, transfers=batch),
    )
    assert first == second
    assert (first["applied"], first["rejected"], first["duplicate"]) == (100, 1, 0)
    assert await balances(observer) == {1: 900, 2: 100}
    assert set((await writers(observer)).values()) == {ctx["job_id"]}


async def test_large_batches_queue_before_locking_and_small_ones_do_not(
    ctx: dict[str, Any],
    engine: AsyncEngine,
    observer: asyncpg.Connection,
    database_url: str,
) -> None:
    await seed_accounts(engine, dict.fromkeys(range(1, 101), ("EUR", 1_000)))
    large = [transfer(n, n + 50, 1) for n in range(1, 51)]
    small = [transfer(1, 2, 1)]
    assert len(accounts_to_lock(_items(large))) > LARGE_BATCH_ACCOUNTS
    other = await connect(database_url)
    try:
        async with other.transaction():
            await other.execute("select pg_advisory_xact_lock($1)", LARGE_BATCH_LOCK)
            queued = asyncio.create_task(execute(transfer_funds, ctx, transfers=large))
            await wait_for_lock_wait(observer)
            # While the large batch waits, it holds no account: a small job on its accounts runs.
            assert (await execute(transfer_funds, ctx, transfers=small))["applied"] == 1
            assert not queued.done()
        result = await queued
    finally:
        await other.close()

    assert result["applied"] == 50
    final = await balances(observer)
    assert (final[1], final[2], final[51], final[100]) == (998, 1_000, 1_001, 1_001)


async def test_grouped_single_transfer_jobs_and_batches_at_once_never_deadlock(
    ctx: dict[str, Any], engine: AsyncEngine, observer: asyncpg.Connection
) -> None:
    """Single-transfer jobs written in groups (jobs.transfers.group) meet small and large batches
    on the same accounts and the same ids: every writer locks in id order, so nobody waits in a
    cycle, nothing is retried for a deadlock, and the books add up. (An id that a group and a
    batch both insert makes the later one fall back: that is a conflict, not a deadlock.)"""
    rng = random.Random(21)
    accounts = dict.fromkeys(range(1, 101), ("EUR", 500))
    singles = [[transfer(*rng.sample(range(1, 101), 2), rng.randrange(1, 400))] for _ in range(80)]
    batches = [
        [transfer(*rng.sample(range(1, 101), 2), rng.randrange(1, 400)) for _ in range(size)]
        for size in (3, 40, 200, 120)
    ]
    assert sum(len(accounts_to_lock(_items(b))) > LARGE_BATCH_ACCOUNTS for b in batches) == 2
    # Ids that a single-transfer job and a batch both send.
    batches[1] += singles[5] + singles[40]
    batches[2] = singles[70] + batches[2]
    jobs = {f"mixed-{n:03}": batch for n, batch in enumerate([*singles, *batches])}
    await seed_accounts(engine, accounts)

    with capture_logs() as logs:
        results = await asyncio.gather(
            *(
                execute(transfer_funds, {**ctx, "job_id": job_id}, transfers=batch)
                for job_id, batch in jobs.items()
            )
        )

    assert not [entry for entry in logs if entry["event"] == "transfers.retry"]
    assert not [entry for entry in logs if entry.get("sqlstate") in {"40P01", "40001"}]
    state = await books(observer)
    check_books(dict(zip(jobs, results, strict=True)), jobs, state, dict.fromkeys(accounts, 500))
    # The single-transfer jobs went in groups: fewer transactions than writers.
    xmins = await observer.fetchval("select count(distinct xmin::text) from transfers")
    assert xmins < len({job_id for job_id in jobs if job_id < "mixed-080"}) // 2
