"""A worker killed around a group commit: with a group's transaction open, and just after it
committed (before arq stored any of its jobs' results).

In both, a first job is held up by a row lock another session takes, so that the jobs enqueued
after it wait for its transaction and then go as one group. The next worker runs the jobs again
under the same job ids (after ETL_REQUEUE_AFTER, 5 s here): each transfer is applied once, and
each job's result is true, in the second case the very result the killed run computed.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from tests.integration.test_group_commit import check_books
from tests.support.processes import stored_result, wait_for_result, wait_until_running
from tests.support.rig import Rig
from tests.support.worker_process import (
    KILL_AFTER_GROUP_ENV,
    KILLED_AFTER_GROUP_EVENT,
    RETURNED_EVENT,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

OPENING = dict.fromkeys(range(1, 9), 1_000)


def transfer(source: int, target: int, amount: int, transfer_id: Any = None) -> dict[str, Any]:
    return {
        "id": str(transfer_id or uuid.uuid4()),
        "from_account": source,
        "to_account": target,
        "amount_cents": amount,
    }


def later_jobs() -> list[list[dict[str, Any]]]:
    """The jobs that wait for the first one: every one touches account 7, and between them an
    overdraft, ids two jobs send (same content, other content), a repeat within a job."""
    big = transfer(7, 3, 600)
    return [
        [big],
        [transfer(7, 4, 600)],  # 7 holds 400 after `big`, if it ran first
        [transfer(3, 7, 50)],
        [big],  # the same transfer from another job
        [{**big, "amount_cents": 601}],  # its id with other content
        [transfer(5, 7, 100), transfer(7, 6, 2_000)],
        [transfer(6, 7, 300), *([transfer(7, 8, 1)] * 2)],
    ]


async def prepare(rig: Rig) -> None:
    conn = await asyncpg.connect(rig.servers.postgres.admin_dsn)
    try:
        await conn.executemany(
            "insert into accounts (id, currency, balance_cents) values ($1, 'EUR', $2)",
            list(OPENING.items()),
        )
    finally:
        await conn.close()


class RowLock:
    """Another session holding one account's row, from `take()` until `release()`."""

    def __init__(self, rig: Rig, account_id: int) -> None:
        self.rig, self.account_id = rig, account_id
        self.conn: asyncpg.Connection | None = None

    async def take(self) -> RowLock:
        self.conn = await asyncpg.connect(self.rig.servers.postgres.admin_dsn)
        await self.conn.execute("begin")
        await self.conn.execute("select 1 from accounts where id = $1 for update", self.account_id)
        return self

    async def release(self) -> None:
        if self.conn is not None:
            await self.conn.execute("rollback")
            await self.conn.close()
            self.conn = None


async def worker_sessions(rig: Rig) -> list[tuple[str | None, str | None]]:
    """(state, wait_event_type) of the worker's database sessions that are not idle."""
    rows = await asyncpg_fetch(
        rig,
        "select state, wait_event_type from pg_stat_activity"
        " where application_name = 'etl-worker' and state <> 'idle'",
    )
    return [(row[0], row[1]) for row in rows]


async def asyncpg_fetch(rig: Rig, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(rig.servers.postgres.admin_dsn)
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


async def wait_for_lock_wait(rig: Rig) -> None:
    for _ in range(1_000):
        if ("active", "Lock") in await worker_sessions(rig):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("no worker session waited for a lock")


async def books(rig: Rig) -> tuple[dict[int, int], dict[UUID, tuple[Any, ...]]]:
    balances = await asyncpg_fetch(rig, "select id, balance_cents from accounts")
    ledger = await asyncpg_fetch(
        rig,
        "select id, from_account_id, to_account_id, amount_cents, status, reason, job_id"
        " from transfers",
    )
    return {r[0]: r[1] for r in balances}, {r[0]: tuple(r[1:]) for r in ledger}


async def first_alone_then_the_rest_waiting(rig: Rig) -> tuple[str, dict[str, Any]]:
    """Enqueue the first job and, once it waits for account 1 (held by the caller), the others:
    they arrive while its transaction is open, and wait for it. The ids and what each sent."""
    sent: dict[str, Any] = {}
    first = [transfer(1, 2, 100)]
    first_id = await rig.enqueue("transfer_funds", transfers=first)
    sent[first_id] = first
    await wait_for_lock_wait(rig)
    for batch in later_jobs():
        sent[await rig.enqueue("transfer_funds", transfers=batch)] = batch
    for job_id in sent:
        await wait_until_running(rig.redis, job_id, within_s=10)
    await asyncio.sleep(0.3)  # each has reached the group commit and waits there
    return first_id, sent


async def test_a_worker_killed_with_a_group_in_flight_commits_none_of_it(rig: Rig) -> None:
    await prepare(rig)
    first = await rig.start_worker()
    hold_1 = await RowLock(rig, 1).take()
    hold_7: RowLock | None = None
    try:
        first_id, sent = await first_alone_then_the_rest_waiting(rig)
        hold_7 = await RowLock(rig, 7).take()
        await hold_1.release()
        # The first job commits alone; the others, as one group, lock their accounts in id
        # order and wait for 7.
        first_result = await wait_for_result(rig.redis, first_id, within_s=10)
        await wait_for_lock_wait(rig)
        # One transaction open for the seven jobs, and none of them finished.
        assert await worker_sessions(rig) == [("active", "Lock")]
        group = [job_id for job_id in sent if job_id != first_id]
        assert [await stored_result(rig.redis, job_id) for job_id in group] == [None] * 7
        first.kill()
    finally:
        await hold_1.release()
        if hold_7 is not None:
            await hold_7.release()
    assert first_result["s"] is True and first_result["r"]["applied"] == 1
    _, ledger = await books(rig)
    assert [row[5] for row in ledger.values()] == [first_id]  # none of the group's rows

    second = await rig.start_worker()
    results = {job_id: await wait_for_result(rig.redis, job_id, within_s=60) for job_id in group}
    assert all(record["s"] is True and record["t"] == 2 for record in results.values()), results
    state = await books(rig)
    check_books(
        {first_id: first_result["r"]} | {j: record["r"] for j, record in results.items()},
        sent,
        state,
        OPENING,
    )
    # Every transfer recorded once: the group's rows by its jobs, in the next worker's run.
    assert len(state[1]) == len({t["id"] for batch in sent.values() for t in batch})
    assert {row[5] for row in state[1].values()} <= set(sent)
    assert second.alive()


async def test_a_worker_killed_after_a_group_committed_reports_each_jobs_result_when_run_again(
    rig: Rig,
) -> None:
    await prepare(rig)
    first = await rig.start_worker(**{KILL_AFTER_GROUP_ENV: "transfer_funds"})
    hold_1 = await RowLock(rig, 1).take()
    try:
        first_id, sent = await first_alone_then_the_rest_waiting(rig)
    finally:
        await hold_1.release()  # the first job commits alone, then the others as one group

    killed = await first.wait_for_event(KILLED_AFTER_GROUP_EVENT, within_s=30)
    assert await first.exited(within_s=10) == -signal.SIGKILL
    group = [job_id for job_id in sent if job_id != first_id]
    assert sorted(killed["jobs"]) == sorted(group)
    returned = {
        line["job_id"]: line["result"]
        for line in first.events()
        if line.get("event") == RETURNED_EVENT
    }
    first_result = await stored_result(rig.redis, first_id)
    assert first_result is not None and first_result["r"] == returned[first_id]
    # Committed, and arq stored none of the group's results.
    assert [await stored_result(rig.redis, job_id) for job_id in group] == [None] * 7
    committed = await books(rig)
    check_books(returned, sent, committed, OPENING)
    # One transaction wrote all the group's rows (check_books: each marked with its own job).
    xmins = await asyncpg_fetch(
        rig, f"select count(distinct xmin::text) from transfers where job_id <> '{first_id}'"
    )
    assert xmins[0][0] == 1

    await rig.start_worker()
    results = {job_id: await wait_for_result(rig.redis, job_id, within_s=60) for job_id in group}

    for job_id, record in results.items():
        assert record["s"] is True and record["t"] == 2, record
        assert record["r"] == returned[job_id]  # what the killed run computed, read back
    assert await books(rig) == committed  # the runs again wrote and moved nothing
    assert sum(r["applied"] for r in returned.values()) >= 4
