"""Transfers through real worker processes, with a worker killed mid-batch and batches racing.

Whatever happens, money is neither made nor lost: the balances add up to what they started at,
none is negative, every transfer id is in the ledger once, and every balance is its opening
balance plus what the ledger says came in minus what went out.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import asyncpg
import pytest

from tests.support.processes import poll, wait_for_result, wait_until_running
from tests.support.rig import Rig

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

OPENING_CENTS = 50_000


async def open_accounts(rig: Rig, count: int) -> None:
    conn = await asyncpg.connect(rig.servers.postgres.admin_dsn)
    try:
        await conn.execute(
            "insert into accounts (id, currency, balance_cents) "
            "select n, 'EUR', $1 from generate_series(1, $2) n",
            OPENING_CENTS,
            count,
        )
    finally:
        await conn.close()


def random_batch(rng: random.Random, *, size: int, accounts: int) -> list[dict[str, Any]]:
    batch = []
    for _ in range(size):
        source, target = rng.sample(range(1, accounts + 1), 2)
        batch.append(
            {
                "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "from_account": source,
                "to_account": target,
                "amount_cents": rng.randint(1, 3_000),
            }
        )
    return batch


async def assert_books_balance(rig: Rig, *, accounts: int) -> None:
    assert await rig.sql("select sum(balance_cents) from accounts") == accounts * OPENING_CENTS
    assert await rig.sql("select count(*) from accounts where balance_cents < 0") == 0
    assert await rig.sql("select count(*) - count(distinct id) from transfers") == 0
    off_ledger = await rig.sql(
        """
        select count(*) from accounts a
        where a.balance_cents <> $1
            + coalesce((select sum(amount_cents) from transfers
                        where status = 'applied' and to_account_id = a.id), 0)
            - coalesce((select sum(amount_cents) from transfers
                        where status = 'applied' and from_account_id = a.id), 0)
        """,
        OPENING_CENTS,
    )
    assert off_ledger == 0


def outcomes(record: dict[str, Any]) -> dict[str, str]:
    return {item["id"]: item["status"] for item in record["r"]["results"]}


async def test_killed_mid_batch_the_batch_runs_again_and_applies_once(rig: Rig) -> None:
    await open_accounts(rig, 10)
    batch = random_batch(random.Random(7), size=2_000, accounts=10)
    first = await rig.start_worker()

    # Hold the batch inside its transaction: another session inserts one of its ids and does not
    # commit, so the batch's ledger INSERT waits on that row after its balance UPDATE has run.
    blocker = await asyncpg.connect(rig.servers.postgres.admin_dsn)
    try:
        hold = blocker.transaction()
        await hold.start()
        await blocker.execute(
            "insert into transfers (id, from_account_id, to_account_id, amount_cents, status) "
            "values ($1, 1, 2, 1, 'rejected')",
            uuid.UUID(batch[-1]["id"]),
        )
        job_id = await rig.enqueue("transfer_funds", transfers=batch)
        await wait_until_running(rig.redis, job_id, within_s=10)

        async def batch_is_waiting() -> bool:
            waiting = await rig.sql(
                "select count(*) from pg_stat_activity "
                "where application_name = 'etl-worker' and wait_event_type = 'Lock'"
            )
            return bool(waiting)

        await poll(batch_is_waiting, within_s=10, what="the batch to wait on the held row")
        first.kill()
        # Its server session lives on until the row it waits for is released, then finds its
        # client gone and rolls back: a transaction commits only when the client says so.
        await hold.rollback()
    finally:
        await blocker.close()

    await rig.start_worker()
    record = await wait_for_result(rig.redis, job_id, within_s=60)
    assert record["s"] is True, record
    assert record["t"] == 2
    result = record["r"]
    assert result["duplicate"] == 0
    assert result["applied"] + result["rejected"] == len(batch)
    assert result["applied"] > len(batch) // 2
    assert await rig.sql("select count(*) from transfers") == len(batch)
    assert (
        await rig.sql("select count(*) from transfers where status = 'applied'")
        == (result["applied"])
    )
    await assert_books_balance(rig, accounts=10)

    # Replayed after the crash and the re-run: nothing moves twice.
    replay = await rig.enqueue("transfer_funds", transfers=batch)
    replayed = await wait_for_result(rig.redis, replay, within_s=30)
    assert (replayed["r"]["applied"], replayed["r"]["duplicate"]) == (0, len(batch))
    await assert_books_balance(rig, accounts=10)


async def test_eight_overlapping_batches_and_their_replays_at_once(rig: Rig) -> None:
    accounts = 12
    await open_accounts(rig, accounts)
    rng = random.Random(2024)
    batches = [random_batch(rng, size=1_000, accounts=accounts) for _ in range(8)]
    worker = await rig.start_worker(ETL_MAX_JOBS="8")

    # Each batch is queued twice in a row, so a batch and its replay are taken together and race.
    originals, replays = [], []
    for batch in batches:
        originals.append(await rig.enqueue("transfer_funds", transfers=batch))
        replays.append(await rig.enqueue("transfer_funds", transfers=batch))
    records = {
        job: await wait_for_result(rig.redis, job, within_s=90) for job in originals + replays
    }

    assert all(record["s"] for record in records.values()), [
        r["r"] for r in records.values() if not r["s"]
    ]
    for original, replay, batch in zip(originals, replays, batches, strict=True):
        first, second = outcomes(records[original]), outcomes(records[replay])
        assert set(first) == set(second) == {item["id"] for item in batch}
        for transfer_id in first:
            # Whichever of the two ran first decided it; the other saw it in the ledger.
            assert sorted([first[transfer_id], second[transfer_id]]) in (
                ["applied", "duplicate"],
                ["duplicate", "rejected"],
            ), transfer_id
    applied = sum(record["r"]["applied"] for record in records.values())
    assert applied == await rig.sql("select count(*) from transfers where status = 'applied'")
    assert applied > 1_000
    assert await rig.sql("select count(*) from transfers") == 8 * 1_000
    await assert_books_balance(rig, accounts=accounts)

    # No job failed, deadlocks included: they ran eight at a time on the same accounts.
    finished = [e for e in worker.events() if e["event"] == "job.finished"]
    assert len([e for e in finished if e["status"] == "complete"]) == 16
    assert [e for e in finished if e["status"] == "failed"] == []
    assert "DeadlockDetected" not in worker.text()
