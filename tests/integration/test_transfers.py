"""`transfer_funds` against real PostgreSQL: outcomes, ledger, balances, atomicity, fallback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from arq.connections import ArqRedis
from arq.jobs import Job
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

import jobs.transfers.job
from jobs.transfers.job import transfer_funds
from jobs.transfers.plan import (
    ALREADY_RECORDED,
    BALANCE_OVERFLOW,
    NOT_POSITIVE,
    REPEATED_IN_BATCH,
    SAME_ACCOUNT,
    UNKNOWN_FROM,
    UNKNOWN_TO,
)
from jobs.validation import BIGINT_MAX
from tests.support.worker_helpers import run_burst
from worker.runner import execute
from worker.settings import Settings

Balances = dict[int, int]
Ledger = dict[UUID, tuple[int, int, int, str, str | None]]


def transfer(source: int, target: int, amount: Any, transfer_id: Any = None) -> dict[str, Any]:
    """One transfer as a client sends it (JSON: the id is text)."""
    return {
        "id": str(transfer_id or uuid4()),
        "from_account": source,
        "to_account": target,
        "amount_cents": amount,
    }


async def seed_accounts(engine: AsyncEngine, accounts: Mapping[int, tuple[str, int]]) -> None:
    """accounts: id -> (currency, balance_cents)."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "insert into accounts (id, currency, balance_cents)"
                " values (:id, :currency, :balance)"
            ),
            [
                {"id": account_id, "currency": currency, "balance": balance}
                for account_id, (currency, balance) in accounts.items()
            ],
        )


async def connect(database_url: str) -> asyncpg.Connection:
    """A connection of its own, outside any job's."""
    return await asyncpg.connect(
        make_url(database_url).set(drivername="postgresql").render_as_string(False)
    )


@pytest.fixture
async def observer(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A second connection, outside the job's, to see only what the job committed."""
    conn = await connect(database_url)
    yield conn
    await conn.close()


async def balances(conn: asyncpg.Connection) -> Balances:
    return {row["id"]: row["balance_cents"] for row in await conn.fetch("select * from accounts")}


async def ledger(conn: asyncpg.Connection) -> Ledger:
    rows = await conn.fetch(
        "select id, from_account_id, to_account_id, amount_cents, status, reason from transfers"
    )
    return {row[0]: tuple(row[1:]) for row in rows}


def outcomes(result: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    return [(r["id"], r["status"], r["reason"]) for r in result["results"]]


async def test_transfers_apply_in_order_and_are_recorded(
    ctx: dict[str, Any], engine: AsyncEngine, observer: asyncpg.Connection
) -> None:
    await seed_accounts(engine, {1: ("EUR", 1_000), 2: ("EUR", 0), 3: ("EUR", 50)})
    batch = [transfer(1, 2, 700), transfer(2, 3, 650), transfer(3, 1, 700)]

    result = await execute(transfer_funds, ctx, transfers=batch)

    assert result == {
        "applied": 3,
        "rejected": 0,
        "duplicate": 0,
        "results": [{"id": t["id"], "status": "applied", "reason": None} for t in batch],
    }
    assert await balances(observer) == {1: 1_000, 2: 50, 3: 0}
    assert await ledger(observer) == {
        UUID(batch[0]["id"]): (1, 2, 700, "applied", None),
        UUID(batch[1]["id"]): (2, 3, 650, "applied", None),
        UUID(batch[2]["id"]): (3, 1, 700, "applied", None),
    }
    # Only the accounts whose balance changed are touched.
    touched = await observer.fetch(
        "select id from accounts where updated_at = (select max(updated_at) from accounts)"
    )
    assert sorted(row["id"] for row in touched) == [2, 3]


async def test_each_reject_rule_is_recorded_with_its_reason_and_moves_nothing(
    ctx: dict[str, Any], engine: AsyncEngine, observer: asyncpg.Connection
) -> None:
    await seed_accounts(
        engine,
        {1: ("EUR", 100), 2: ("EUR", 0), 3: ("USD", 100), 4: ("EUR", BIGINT_MAX - 5)},
    )
    batch = [
        transfer(1, 2, 0),
        transfer(1, 2, -10),
        transfer(1, 1, 10),
        transfer(99, 2, 10),
        transfer(1, 99, 10),
        transfer(1, 3, 10),
        transfer(1, 2, 101),
        transfer(1, 4, 6),
        transfer(1, 2, 60),  # applied: leaves 40
        transfer(1, 2, 60),  # so this one is short
    ]
    reasons = [
        NOT_POSITIVE,
        NOT_POSITIVE,
        SAME_ACCOUNT,
        UNKNOWN_FROM,
        UNKNOWN_TO,
        "currency mismatch: from_account holds EUR, to_account holds USD",
        "insufficient funds: from_account holds 100 cents, amount_cents is 101",
        BALANCE_OVERFLOW,
        None,
        "insufficient funds: from_account holds 40 cents, amount_cents is 60",
    ]

    result = await execute(transfer_funds, ctx, transfers=batch)

    assert (result["applied"], result["rejected"], result["duplicate"]) == (1, 9, 0)
    assert outcomes(result) == [
        (t["id"], "applied" if reason is None else "rejected", reason)
        for t, reason in zip(batch, reasons, strict=True)
    ]
    assert await balances(observer) == {1: 40, 2: 60, 3: 100, 4: BIGINT_MAX - 5}
    assert await ledger(observer) == {
        UUID(t["id"]): (
            t["from_account"],
            t["to_account"],
            t["amount_cents"],
            "applied" if reason is None else "rejected",
            reason,
        )
        for t, reason in zip(batch, reasons, strict=True)
    }


async def test_an_id_twice_in_a_batch_is_processed_once(
    ctx: dict[str, Any], engine: AsyncEngine, observer: asyncpg.Connection
) -> None:
    await seed_accounts(engine, {1: ("EUR", 100), 2: ("EUR", 0)})
    first = transfer(1, 2, 30)
    batch = [first, transfer(1, 2, 50, first["id"]), transfer(1, 2, 30, first["id"])]

    result = await execute(transfer_funds, ctx, transfers=batch)

    assert outcomes(result) == [
        (first["id"], "applied", None),
        (first["id"], "duplicate", REPEATED_IN_BATCH),
        (first["id"], "duplicate", REPEATED_IN_BATCH),
    ]
    assert await balances(observer) == {1: 70, 2: 30}
    assert await ledger(observer) == {UUID(first["id"]): (1, 2, 30, "applied", None)}


async def test_a_replayed_batch_is_all_duplicate_and_changes_nothing(
    ctx: dict[str, Any], engine: AsyncEngine, observer: asyncpg.Connection
) -> None:
    await seed_accounts(engine, {1: ("EUR", 100), 2: ("EUR", 0)})
    batch = [transfer(1, 2, 30), transfer(1, 2, 0), transfer(2, 1, 10)]
    first = await execute(transfer_funds, ctx, transfers=batch)
    after_first = (await balances(observer), await ledger(observer))
    assert (first["applied"], first["rejected"]) == (2, 1)

    replay = await execute(transfer_funds, ctx, transfers=batch)
    # A batch overlapping an earlier one: only the new transfer applies.
    new = transfer(1, 2, 5)
    overlap = await execute(transfer_funds, ctx, transfers=[batch[0], new])

    assert replay == {
        "applied": 0,
        "rejected": 0,
        "duplicate": 3,
        "results": [
            {"id": t["id"], "status": "duplicate", "reason": ALREADY_RECORDED} for t in batch
        ],
    }
    assert outcomes(overlap) == [
        (batch[0]["id"], "duplicate", ALREADY_RECORDED),
        (new["id"], "applied", None),
    ]
    assert after_first[0] == {1: 80, 2: 20}
    assert await balances(observer) == {1: 75, 2: 25}
    assert await ledger(observer) == after_first[1] | {UUID(new["id"]): (1, 2, 5, "applied", None)}


async def test_a_failure_midway_leaves_nothing(
    ctx: dict[str, Any],
    engine: AsyncEngine,
    observer: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await seed_accounts(engine, {1: ("EUR", 100), 2: ("EUR", 0)})
    written = jobs.transfers.job.apply_set_based
    seen_from_outside: list[tuple[Balances, Ledger]] = []

    async def write_then_fail(driver: Any, **kwargs: Any) -> None:
        await written(driver, **kwargs)
        # The writes are done inside the job's transaction; nobody else sees them yet.
        seen_from_outside.append((await balances(observer), await ledger(observer)))
        raise RuntimeError("the worker fell over")

    monkeypatch.setattr(jobs.transfers.job, "apply_set_based", write_then_fail)

    # The runner may wrap an error it does not know; the text is what matters.
    with pytest.raises(Exception, match="the worker fell over"):
        await execute(transfer_funds, ctx, transfers=[transfer(1, 2, 30), transfer(1, 2, 0)])

    assert seen_from_outside == [({1: 100, 2: 0}, {})]
    assert await balances(observer) == {1: 100, 2: 0}
    assert await ledger(observer) == {}


async def test_a_failure_midway_through_the_fallback_leaves_nothing(
    ctx: dict[str, Any],
    engine: AsyncEngine,
    observer: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await seed_accounts(engine, {1: ("EUR", 100), 2: ("EUR", 0)})
    written = jobs.transfers.job.apply_set_based
    calls = 0

    async def fail_first_and_fourth(driver: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        await written(driver, **kwargs)
        if calls == 1:
            await driver.execute("select 1 / 0")  # a data error: the fallback takes over
        if calls == 4:
            raise RuntimeError("the worker fell over")

    monkeypatch.setattr(jobs.transfers.job, "apply_set_based", fail_first_and_fourth)

    # The runner may wrap an error it does not know; the text is what matters.
    with pytest.raises(Exception, match="the worker fell over"):
        await execute(transfer_funds, ctx, transfers=[transfer(1, 2, 10) for _ in range(5)])

    assert calls == 4  # the batch, then three transfers one by one
    assert await balances(observer) == {1: 100, 2: 0}
    assert await ledger(observer) == {}


async def run_batches(
    ctx: dict[str, Any], batches: list[list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    return [await execute(transfer_funds, ctx, transfers=batch) for batch in batches]


async def test_the_fallback_gives_the_same_results_as_the_set_based_path(
    ctx: dict[str, Any],
    engine: AsyncEngine,
    observer: asyncpg.Connection,
    clean_db: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    accounts = {1: ("EUR", 500), 2: ("EUR", 0), 3: ("USD", 100), 4: ("EUR", BIGINT_MAX - 1)}
    first = [
        transfer(1, 2, 300),
        transfer(2, 1, 301),
        transfer(2, 4, 300),  # overflow
        transfer(1, 3, 10),
        transfer(1, 1, 10),
        transfer(7, 1, 10),
        transfer(1, 2, 0),
        transfer(1, 2, 200),
        transfer(2, 1, 450),
    ]
    first.append(transfer(2, 1, 1, first[0]["id"]))
    second = [first[0], first[6], transfer(1, 2, 649), transfer(1, 2, 2)]

    await seed_accounts(engine, accounts)
    set_based = await run_batches(ctx, [first, second])
    set_based_state = (await balances(observer), await ledger(observer))

    async with engine.begin() as conn:
        await conn.execute(text("truncate transfers, accounts"))
    await seed_accounts(engine, accounts)
    written = jobs.transfers.job.apply_set_based
    forced = 0

    async def fail_the_batch_write(driver: Any, *, deltas: Any, ledger: Any) -> None:
        nonlocal forced
        await written(driver, deltas=deltas, ledger=ledger)
        if len(ledger) > 1:  # the batch's write, not a single transfer's
            forced += 1
            await driver.execute("select 1 / 0")

    monkeypatch.setattr(jobs.transfers.job, "apply_set_based", fail_the_batch_write)
    one_by_one = await run_batches(ctx, [first, second])

    assert forced == 2
    assert one_by_one == set_based
    assert (await balances(observer), await ledger(observer)) == set_based_state
    assert set_based_state[0] == {1: 448, 2: 52, 3: 100, 4: BIGINT_MAX - 1}
    assert [r["status"] for r in set_based[1]["results"]] == [
        "duplicate",
        "duplicate",
        "rejected",
        "applied",
    ]


async def test_a_transfer_the_database_refuses_is_rejected_on_its_own(
    ctx: dict[str, Any],
    engine: AsyncEngine,
    observer: asyncpg.Connection,
    clean_db: None,
) -> None:
    """A rule the job does not know (here a cap added to the table) rejects only its transfer."""
    await seed_accounts(engine, {1: ("EUR", 1_000), 2: ("EUR", 0)})
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "alter table accounts"
                " add constraint test_cap check (id <> 2 or balance_cents <= 500)"
            )
        )
    try:
        batch = [transfer(1, 2, 400), transfer(1, 2, 200), transfer(1, 2, 100)]
        result = await execute(transfer_funds, ctx, transfers=batch)
        assert outcomes(result) == [
            (batch[0]["id"], "applied", None),
            (batch[1]["id"], "rejected", "refused by the database: test_cap"),
            (batch[2]["id"], "applied", None),
        ]
        assert await balances(observer) == {1: 500, 2: 500}
        assert (await ledger(observer))[UUID(batch[1]["id"])] == (
            1,
            2,
            200,
            "rejected",
            "refused by the database: test_cap",
        )
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("alter table accounts drop constraint test_cap"))


async def test_transfers_run_through_the_real_worker(
    settings: Settings,
    redis: ArqRedis,
    engine: AsyncEngine,
    observer: asyncpg.Connection,
    clean_db: None,
) -> None:
    await seed_accounts(engine, {1: ("EUR", 100), 2: ("EUR", 0)})
    batch = [transfer(1, 2, 60), transfer(1, 2, 60)]
    job = await redis.enqueue_job(
        "transfer_funds", transfers=batch, _queue_name=settings.queue_name
    )
    assert job is not None

    worker = await run_burst(settings, redis)

    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    result = await Job(
        job.job_id, redis, _queue_name=settings.queue_name, _deserializer=redis.job_deserializer
    ).result(timeout=5)
    assert outcomes(result) == [
        (batch[0]["id"], "applied", None),
        (
            batch[1]["id"],
            "rejected",
            "insufficient funds: from_account holds 40 cents, amount_cents is 60",
        ),
    ]
    assert await balances(observer) == {1: 40, 2: 60}
