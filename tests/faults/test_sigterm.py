"""SIGTERM in the middle of real work: the job finishes within the grace, or it is cancelled,
rolled back and run again by the next worker. Never half-committed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from arq.constants import in_progress_key_prefix

from tests.support.processes import (
    poll,
    stored_result,
    wait_for_progress,
    wait_for_result,
    wait_until_running,
)
from tests.support.rig import Rig

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


def batch_of(size: int) -> list[dict[str, object]]:
    return [
        {
            "id": str(uuid.uuid4()),
            "from_account": 1 + n % 2,
            "to_account": 2 - n % 2,
            "amount_cents": 1 + n % 7,
        }
        for n in range(size)
    ]


@asynccontextmanager
async def ledger_row_held(rig: Rig, transfer_id: str) -> AsyncIterator[None]:
    """Another session inserts `transfer_id` and keeps its transaction open: a batch holding that
    id waits on it inside its own transaction, after moving the balances, until released."""
    conn = await asyncpg.connect(rig.servers.postgres.admin_dsn)
    held = conn.transaction()
    await held.start()
    try:
        await conn.execute(
            "insert into transfers (id, from_account_id, to_account_id, amount_cents, status) "
            "values ($1, 1, 2, 1, 'rejected')",
            uuid.UUID(transfer_id),
        )
        yield
    finally:
        await held.rollback()  # the row was never there
        await conn.close()


async def open_two_accounts(rig: Rig) -> None:
    conn = await asyncpg.connect(rig.servers.postgres.admin_dsn)
    try:
        await conn.execute(
            "insert into accounts (id, currency, balance_cents) values (1, 'EUR', 100000), "
            "(2, 'EUR', 100000)"
        )
    finally:
        await conn.close()


async def batch_waits(rig: Rig) -> None:
    async def waiting() -> bool:
        count = await rig.sql(
            "select count(*) from pg_stat_activity "
            "where application_name = 'etl-worker' and wait_event_type = 'Lock'"
        )
        return bool(count)

    await poll(waiting, within_s=10, what="the batch to wait inside its transaction")


async def test_sigterm_mid_transfer_batch_within_the_grace_it_finishes(rig: Rig) -> None:
    await open_two_accounts(rig)
    batch = batch_of(500)
    worker = await rig.start_worker(ETL_SHUTDOWN_GRACE="20")
    async with ledger_row_held(rig, str(batch[-1]["id"])):
        job_id = await rig.enqueue("transfer_funds", transfers=batch)
        await wait_until_running(rig.redis, job_id, within_s=10)
        await batch_waits(rig)
        worker.terminate()
        await worker.wait_for_event("Setting allow_pick_jobs to `False`", within_s=10)
        await asyncio.sleep(0.5)
        assert worker.alive()  # waiting for the job, as the grace allows
    assert await worker.exited(within_s=20) == 0
    record = await stored_result(rig.redis, job_id)
    assert record is not None and record["s"] is True
    assert (record["t"], record["r"]["applied"]) == (1, 500)
    assert await rig.sql("select count(*) from transfers") == 500
    assert await rig.sql("select sum(balance_cents) from accounts") == 200_000


async def test_sigterm_mid_transfer_batch_past_the_grace_it_rolls_back_and_runs_again(
    rig: Rig,
) -> None:
    await open_two_accounts(rig)
    batch = batch_of(500)
    worker = await rig.start_worker(ETL_SHUTDOWN_GRACE="1")
    async with ledger_row_held(rig, str(batch[-1]["id"])):
        job_id = await rig.enqueue("transfer_funds", transfers=batch)
        await wait_until_running(rig.redis, job_id, within_s=10)
        await batch_waits(rig)
        worker.terminate()
        assert await worker.exited(within_s=15) == 0
        # Cancelled while its balance UPDATE had run and its INSERT waited: nothing of it stays.
        assert await rig.sql("select count(*) from transfers") == 0
        assert await rig.sql("select balance_cents from accounts where id = 1") == 100_000
        assert await rig.sql("select balance_cents from accounts where id = 2") == 100_000
    assert await stored_result(rig.redis, job_id) is None
    assert await rig.redis.zscore(rig.settings.queue_name, job_id) is not None
    assert await rig.redis.exists(in_progress_key_prefix + job_id) == 0

    await rig.start_worker()
    record = await wait_for_result(rig.redis, job_id, within_s=30)
    assert (record["s"], record["t"], record["r"]["applied"]) == (True, 2, 500)
    assert await rig.sql("select count(*) from transfers") == 500
    assert await rig.sql("select sum(balance_cents) from accounts") == 200_000


async def test_sigterm_mid_load_past_the_grace_readers_see_none_of_it_then_all(rig: Rig) -> None:
    rows = 30_000
    worker = await rig.start_worker(ETL_SHUTDOWN_GRACE="1")
    # About 4 s of work (20 chunks, 0.2 s apart): the 1 s grace runs out well before the end.
    job_id = await rig.enqueue("load_customers", prefix="term", rows=rows, chunk=1_500, pause_s=0.2)
    await wait_for_progress(rig.redis, job_id, "rows", 1_500, within_s=20)
    worker.terminate()
    assert await worker.exited(within_s=15) == 0
    count = "select count(*) from customers where external_id like 'term-%'"
    assert await rig.sql(count) == 0

    await rig.start_worker()
    record = await wait_for_result(rig.redis, job_id, within_s=60)
    assert record["r"] == {"rows": rows, "tries": 2}
    assert await rig.sql(count) == rows
