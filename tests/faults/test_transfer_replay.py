"""A worker killed after `transfer_funds` committed but before arq stored its result.

The kill switch (`ETL_TEST_KILL_AFTER`, tests/support/worker_process.py) SIGKILLs the worker as
soon as the job's coroutine returns: the transaction is committed, the result is lost. The next
worker runs the job again under the same job id (after ETL_REQUEUE_AFTER, 5 s here), and must
report what the first run did, read from the ledger, without moving any money again.
"""

from __future__ import annotations

import random
import signal
import uuid
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from jobs.models import TransferItem
from jobs.transfers.job import summarise
from jobs.transfers.plan import (
    ALREADY_RECORDED,
    ID_REUSED,
    REPEATED_IN_BATCH,
    RecordedTransfer,
    plan_batch,
)
from tests.support.processes import stored_result, wait_for_result
from tests.support.rig import Rig
from tests.support.worker_process import KILL_AFTER_ENV, KILLED_AFTER_EVENT

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

OPENING = {1: ("EUR", 1_000), 2: ("EUR", 1_000), 3: ("EUR", 1_000), 4: ("EUR", 1_000)}
OPENING |= {5: ("USD", 500)}
EARLIER_JOB = "an-earlier-job"
EARLIER_REASON = "insufficient funds: from_account holds 0 cents, amount_cents is 70"


def transfer(source: int, target: int, amount: int, transfer_id: Any = None) -> dict[str, Any]:
    return {
        "id": str(transfer_id or uuid.uuid4()),
        "from_account": source,
        "to_account": target,
        "amount_cents": amount,
    }


def crafted_batch() -> tuple[list[dict[str, Any]], dict[UUID, RecordedTransfer]]:
    """Transfers with every kind of outcome, then many small ones; an earlier job's two rows."""
    earlier, reused = transfer(3, 4, 70), transfer(3, 4, 80)
    first = transfer(1, 2, 600)
    batch = [
        first,  # applied: 1 holds 400
        transfer(1, 3, 500),  # rejected: insufficient funds
        transfer(2, 3, 1_600),  # applied: 2 holds 0
        transfer(2, 1, 1),  # rejected: insufficient funds
        transfer(1, 5, 10),  # rejected: currency mismatch
        transfer(4, 1, 5, first["id"]),  # duplicate: repeated in this batch
        earlier,  # duplicate: the earlier job's, recorded rejected
        {**reused, "amount_cents": 81},  # rejected: the earlier job's id, other amount
    ]
    rng = random.Random(11)
    for _ in range(200):
        source, target = rng.sample([1, 2, 3, 4], 2)
        batch.append(transfer(source, target, rng.randint(1, 60)))
    recorded = {
        UUID(t["id"]): RecordedTransfer(
            3, 4, t["amount_cents"], "rejected", EARLIER_REASON, EARLIER_JOB
        )
        for t in (earlier, reused)
    }
    return batch, recorded


async def prepare(rig: Rig, recorded: dict[UUID, RecordedTransfer]) -> None:
    conn = await asyncpg.connect(rig.servers.postgres.admin_dsn)
    try:
        await conn.executemany(
            "insert into accounts (id, currency, balance_cents) values ($1, $2, $3)",
            [(i, code, cents) for i, (code, cents) in OPENING.items()],
        )
        await conn.executemany(
            "insert into transfers (id, from_account_id, to_account_id, amount_cents, status,"
            " reason, job_id) values ($1, $2, $3, $4, $5, $6, $7)",
            [(i, *row) for i, row in recorded.items()],
        )
    finally:
        await conn.close()


async def books(rig: Rig) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every balance and every ledger row (with the job that wrote it), as stored."""
    conn = await asyncpg.connect(rig.servers.postgres.admin_dsn)
    try:
        balances = await conn.fetch("select id, balance_cents from accounts order by id")
        ledger = await conn.fetch(
            "select id, from_account_id, to_account_id, amount_cents, status, reason, job_id"
            " from transfers order by id"
        )
    finally:
        await conn.close()
    return [tuple(r) for r in balances], [tuple(r) for r in ledger]


def truth(
    batch: list[dict[str, Any]], recorded: dict[UUID, RecordedTransfer], job_id: str
) -> dict[str, Any]:
    """What the first run returns, by the pure rules on the opening books."""
    items = [TransferItem.model_validate(t) for t in batch]
    accounts = [(i, cents, code) for i, (code, cents) in OPENING.items()]
    plan = plan_batch(items, accounts=accounts, recorded=recorded, job_id=job_id)
    return summarise(items, plan.decisions).model_dump(mode="json")


async def test_a_job_killed_after_its_commit_reports_the_truth_when_run_again(rig: Rig) -> None:
    batch, earlier = crafted_batch()
    await prepare(rig, earlier)
    first = await rig.start_worker(**{KILL_AFTER_ENV: "transfer_funds"})
    job_id = await rig.enqueue("transfer_funds", transfers=batch)

    killed = await first.wait_for_event(KILLED_AFTER_EVENT, within_s=30)
    assert await first.exited(within_s=10) == -signal.SIGKILL
    # Committed, and arq never stored the result.
    assert await stored_result(rig.redis, job_id) is None
    committed = await books(rig)
    expected = truth(batch, earlier, job_id)
    assert killed["result"] == expected

    await rig.start_worker()
    record = await wait_for_result(rig.redis, job_id, within_s=60)

    assert record["s"] is True, record
    assert record["t"] == 2  # the same job, run again
    result = record["r"]
    assert result == expected
    assert (result["applied"], result["duplicate"]) == (expected["applied"], 2)
    assert result["applied"] > 100
    assert result["applied"] + result["rejected"] + result["duplicate"] == len(batch)
    assert [(r["status"], r["reason"]) for r in result["results"][:8]] == [
        ("applied", None),
        ("rejected", "insufficient funds: from_account holds 400 cents, amount_cents is 500"),
        ("applied", None),
        ("rejected", "insufficient funds: from_account holds 0 cents, amount_cents is 1"),
        ("rejected", "currency mismatch: from_account holds EUR, to_account holds USD"),
        ("duplicate", REPEATED_IN_BATCH),
        ("duplicate", ALREADY_RECORDED),
        ("rejected", ID_REUSED),
    ]
    assert result["results"][6]["recorded_status"] == "rejected"
    assert result["results"][6]["recorded_reason"] == EARLIER_REASON

    # The run again wrote nothing and moved nothing: each transfer applied once.
    assert await books(rig) == committed
    balances, ledger = committed
    assert sum(cents for _, cents in balances) == sum(cents for _, cents in OPENING.values())
    assert (
        len(ledger)
        == len({row[0] for row in ledger})
        == len(earlier)
        + result["applied"]
        + (
            result["rejected"] - 1  # the reused id is not recorded again
        )
    )
    assert {row[6] for row in ledger if row[0] not in earlier} == {job_id}
    moved = {i: cents for i, (_, cents) in OPENING.items()}
    for _, source, target, amount, status, _, _ in ledger:
        if status == "applied":
            moved[source] -= amount
            moved[target] += amount
    assert balances == sorted(moved.items())
