"""`transfer_funds` against real PostgreSQL: outcomes, ledger, balances, atomicity, fallback,
and what a replay of the same job, a later job with the same ids, and a reused id come to."""

from __future__ import annotations

import uuid
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
    ID_REUSED,
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


def another_job(ctx: dict[str, Any]) -> dict[str, Any]:
    """`ctx` as arq builds it for another job (its own job id)."""
    return {**ctx, "job_id": f"test-{uuid.uuid4().hex[:8]}", "job_try": 1}


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


async def writers(conn: asyncpg.Connection) -> dict[UUID, str | None]:
    """Which job recorded each ledger row."""
    return {row[0]: row[1] for row in await conn.fetch("select id, job_id from transfers")}


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


async def test_a_batch_sent_again_by_another_job_is_all_duplicate_and_changes_nothing(
    ctx: dict[str, Any], engine: AsyncEngine, observer: asyncpg.Connection
) -> None:
    await seed_accounts(engine, {1: ("EUR", 100), 2: ("EUR", 0)})
    batch = [transfer(1, 2, 30), transfer(1, 2, 0), transfer(2, 1, 10)]
    first = await execute(transfer_funds, ctx, transfers=batch)
    after_first = (await balances(observer), await ledger(observer))
    assert (first["applied"], first["rejected"]) == (2, 1)

    again = await execute(transfer_funds, another_job(ctx), transfers=batch)
    # A batch overlapping an earlier one: only the new transfer applies.
    new = transfer(1, 2, 5)
    overlap = await execute(transfer_funds, another_job(ctx), transfers=[batch[0], new])

    assert (again["applied"], again["rejected"], again["duplicate"]) == (0, 0, 3)
    assert [(status, reason) for _, status, reason in outcomes(again)] == [
        ("duplicate", ALREADY_RECORDED)
    ] * 3
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
    """Each batch as a job of its own (its own job id)."""
    return [await execute(transfer_funds, another_job(ctx), transfers=b) for b in batches]


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

    async def fail_the_batch_write(driver: Any, *, ledger: Any, **kwargs: Any) -> None:
        nonlocal forced
        await written(driver, ledger=ledger, **kwargs)
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
    assert [(r.get("recorded_status"), r.get("recorded_reason")) for r in set_based[1]["results"]][
        :2
    ] == [("applied", None), ("rejected", NOT_POSITIVE)]


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


@pytest.mark.parametrize("path", ["set-based", "one by one"])
async def test_a_replay_of_the_same_job_after_its_commit_returns_what_the_first_run_returned(
    ctx: dict[str, Any],
    engine: AsyncEngine,
    observer: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
) -> None:
    """The worker died after the commit, before arq stored the result: arq runs the job again."""
    await seed_accounts(engine, {1: ("EUR", 100), 2: ("EUR", 0), 3: ("USD", 50)})
    earlier = transfer(2, 1, 5)
    await execute(transfer_funds, another_job(ctx), transfers=[earlier])  # rejected: 2 is empty
    first_of_two = transfer(1, 2, 60)
    batch = [
        first_of_two,
        transfer(1, 2, 60),  # 40 left: rejected
        transfer(1, 3, 10),  # currency mismatch
        transfer(2, 1, 1, first_of_two["id"]),  # repeated in this batch
        earlier,  # another job's: duplicate
        transfer(2, 1, 20),
    ]
    if path == "one by one":
        written = jobs.transfers.job.apply_set_based

        async def fail_the_batch_write(driver: Any, *, ledger: Any, **kwargs: Any) -> None:
            await written(driver, ledger=ledger, **kwargs)
            if len(ledger) > 1:
                await driver.execute("select 1 / 0")

        monkeypatch.setattr(jobs.transfers.job, "apply_set_based", fail_the_batch_write)

    first = await execute(transfer_funds, ctx, transfers=batch)
    committed = (await balances(observer), await ledger(observer))
    replay = await execute(transfer_funds, {**ctx, "job_try": 2}, transfers=batch)

    assert replay == first
    assert (first["applied"], first["rejected"], first["duplicate"]) == (2, 2, 2)
    assert outcomes(first) == [
        (batch[0]["id"], "applied", None),
        (
            batch[1]["id"],
            "rejected",
            "insufficient funds: from_account holds 40 cents, amount_cents is 60",
        ),
        (
            batch[2]["id"],
            "rejected",
            "currency mismatch: from_account holds EUR, to_account holds USD",
        ),
        (batch[3]["id"], "duplicate", REPEATED_IN_BATCH),
        (earlier["id"], "duplicate", ALREADY_RECORDED),
        (batch[5]["id"], "applied", None),
    ]
    assert first["results"][4]["recorded_status"] == "rejected"
    # The replay wrote nothing and moved nothing.
    assert (await balances(observer), await ledger(observer)) == committed
    assert committed[0] == {1: 60, 2: 40, 3: 50}
    recorded_by = await writers(observer)
    assert {recorded_by[UUID(batch[i]["id"])] for i in (0, 1, 2, 5)} == {ctx["job_id"]}
    assert recorded_by[UUID(earlier["id"])] not in (ctx["job_id"], None)


async def test_a_later_job_with_the_same_ids_and_content_gets_the_recorded_outcomes(
    ctx: dict[str, Any], engine: AsyncEngine, observer: asyncpg.Connection
) -> None:
    await seed_accounts(engine, {1: ("EUR", 100), 2: ("EUR", 0)})
    batch = [transfer(1, 2, 70), transfer(1, 2, 70), transfer(1, 2, 0)]
    first = await execute(transfer_funds, ctx, transfers=batch)
    assert (first["applied"], first["rejected"]) == (1, 2)
    committed = (await balances(observer), await ledger(observer))

    later = await execute(transfer_funds, another_job(ctx), transfers=batch)

    short = "insufficient funds: from_account holds 30 cents, amount_cents is 70"
    assert later == {
        "applied": 0,
        "rejected": 0,
        "duplicate": 3,
        "results": [
            {
                "id": batch[0]["id"],
                "status": "duplicate",
                "reason": ALREADY_RECORDED,
                "recorded_status": "applied",
            },
            {
                "id": batch[1]["id"],
                "status": "duplicate",
                "reason": ALREADY_RECORDED,
                "recorded_status": "rejected",
                "recorded_reason": short,
            },
            {
                "id": batch[2]["id"],
                "status": "duplicate",
                "reason": ALREADY_RECORDED,
                "recorded_status": "rejected",
                "recorded_reason": NOT_POSITIVE,
            },
        ],
    }
    assert (await balances(observer), await ledger(observer)) == committed
    assert set((await writers(observer)).values()) == {ctx["job_id"]}


async def test_the_same_id_with_other_content_is_rejected_and_nothing_is_written(
    ctx: dict[str, Any], engine: AsyncEngine, observer: asyncpg.Connection
) -> None:
    await seed_accounts(engine, {1: ("EUR", 100), 2: ("EUR", 0), 3: ("EUR", 0)})
    recorded = [transfer(1, 2, 30), transfer(1, 2, 0), transfer(1, 2, 10)]
    await execute(transfer_funds, ctx, transfers=recorded)
    committed = (await balances(observer), await ledger(observer), await writers(observer))
    assert committed[0] == {1: 60, 2: 40, 3: 0}

    fresh = transfer(1, 3, 5)
    reused = [
        {**recorded[0], "amount_cents": 31},
        {**recorded[1], "to_account": 3},
        {**recorded[2], "from_account": 3, "to_account": 1},
        fresh,
    ]
    later = await execute(transfer_funds, another_job(ctx), transfers=reused)
    # Even under the job id that recorded them: other content is no replay.
    same_job = await execute(
        transfer_funds, {**ctx, "job_try": 2}, transfers=[{**recorded[0], "to_account": 3}]
    )

    assert outcomes(later) == [
        (recorded[0]["id"], "rejected", ID_REUSED),
        (recorded[1]["id"], "rejected", ID_REUSED),
        (recorded[2]["id"], "rejected", ID_REUSED),
        (fresh["id"], "applied", None),
    ]
    assert (later["applied"], later["rejected"], later["duplicate"]) == (1, 3, 0)
    assert outcomes(same_job) == [(recorded[0]["id"], "rejected", ID_REUSED)]
    # Only the fresh transfer was written; the reused ids' rows are as first recorded.
    assert await balances(observer) == {1: 55, 2: 40, 3: 5}
    assert await ledger(observer) == committed[1] | {UUID(fresh["id"]): (1, 3, 5, "applied", None)}
    assert {k: v for k, v in (await writers(observer)).items() if k in committed[2]} == committed[2]
