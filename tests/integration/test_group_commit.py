"""Group commit: small `transfer_funds` jobs running at once share one transaction, and each still
gets exactly what it would get alone, in arrival order.

The main check runs the same jobs twice on the same opening books: at once (written in groups)
and one after another (each alone, in its own transaction), and compares every job's result, the
balances and every ledger row with the job that wrote it.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from arq.connections import ArqRedis
from arq.jobs import Job
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

import jobs.transfers.group
import jobs.transfers.job
from jobs.models import TransferItem
from jobs.transfers.group import GROUP_JOB_MAX_TRANSFERS, GroupCommit, group_commit_for
from jobs.transfers.job import apply_alone, summarise, transfer_funds
from jobs.transfers.plan import (
    ALREADY_RECORDED,
    ID_REUSED,
    REPEATED_IN_BATCH,
    RecordedTransfer,
    plan_batch,
    plan_group,
)
from tests.integration.test_transfers import balances, connect, seed_accounts, transfer
from tests.support.worker_helpers import run_burst
from worker.context import CTX_KEY, AppContext
from worker.runner import execute
from worker.settings import Settings

Books = tuple[dict[int, int], dict[UUID, tuple[Any, ...]]]


@pytest.fixture
async def observer(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(database_url)
    yield conn
    await conn.close()


def commits_of(ctx: dict[str, Any]) -> GroupCommit:
    """The worker's group commit for this test's sessionmaker (the one the jobs use)."""
    app = ctx[CTX_KEY]
    assert isinstance(app, AppContext)
    return group_commit_for(app.sessionmaker, alone=apply_alone)


async def books(conn: asyncpg.Connection) -> Books:
    """Balances, and every ledger row with the job that wrote it."""
    rows = await conn.fetch(
        "select id, from_account_id, to_account_id, amount_cents, status, reason, job_id"
        " from transfers"
    )
    return await balances(conn), {row[0]: tuple(row[1:]) for row in rows}


async def transactions_that_wrote(conn: asyncpg.Connection) -> int:
    """How many transactions wrote the ledger's rows (rows of one transaction share its xmin)."""
    value = await conn.fetchval("select count(distinct xmin::text) from transfers")
    assert isinstance(value, int)
    return value


async def reset(engine: AsyncEngine, accounts: Mapping[int, tuple[str, int]]) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("truncate transfers, accounts"))
    await seed_accounts(engine, accounts)


def job_ctx(ctx: dict[str, Any], job_id: str) -> dict[str, Any]:
    return {**ctx, "job_id": job_id, "job_try": 1}


Jobs = list[tuple[str, list[dict[str, Any]]]]
"""(job id, transfers), in arrival order."""


async def run_at_once(ctx: dict[str, Any], jobs: Jobs, *, spacing_s: float) -> list[Any]:
    """Every job in a task of its own, started in order `spacing_s` apart: each joins the group
    forming at its arrival. Arrival order is start order (a job submits at its first step)."""
    tasks = []
    for job_id, batch in jobs:
        tasks.append(
            asyncio.create_task(execute(transfer_funds, job_ctx(ctx, job_id), transfers=batch))
        )
        if spacing_s:
            await asyncio.sleep(spacing_s)
    return list(await asyncio.gather(*tasks))


async def run_one_by_one(ctx: dict[str, Any], jobs: Jobs) -> list[Any]:
    return [await execute(transfer_funds, job_ctx(ctx, j), transfers=b) for j, b in jobs]


def check_books(
    results: Mapping[str, dict[str, Any]],
    jobs: Mapping[str, list[dict[str, Any]]],
    state: Books,
    opening: Mapping[int, int],
) -> None:
    """What must hold whatever order the jobs ran in: money kept, no overdraft, each id recorded
    once by the job that reports it applied or rejected, duplicates pointing at another job's row,
    and balances exactly what the applied rows add up to."""
    final, ledger = state
    assert sum(final.values()) == sum(opening.values())
    assert min(final.values()) >= 0
    expected = dict(opening)
    for source, target, amount, status, _, _ in ledger.values():
        if status == "applied":
            expected[source] -= amount
            expected[target] += amount
    assert final == expected
    for job_id, result in results.items():
        batch = jobs[job_id]
        assert [r["id"] for r in result["results"]] == [t["id"] for t in batch]
        for position, (sent, outcome) in enumerate(zip(batch, result["results"], strict=True)):
            row = ledger[UUID(sent["id"])]
            content = (sent["from_account"], sent["to_account"], sent["amount_cents"])
            if outcome["reason"] == REPEATED_IN_BATCH:
                assert sent["id"] in {t["id"] for t in batch[:position]}
            elif outcome["reason"] == ID_REUSED:
                assert row[:3] != content and row[5] != job_id
            elif outcome["status"] == "duplicate":
                assert outcome["reason"] == ALREADY_RECORDED
                assert row[:3] == content and row[5] != job_id
                assert (outcome["recorded_status"], outcome.get("recorded_reason")) == row[3:5]
            else:  # this job's own row: written now, or by its first run (a replay)
                assert row == (*content, outcome["status"], outcome["reason"], job_id)
    assert sum(r["applied"] for r in results.values()) >= sum(
        1 for row in ledger.values() if row[3] == "applied"
    )


OPENING = {1: ("EUR", 500), 2: ("EUR", 300), 3: ("EUR", 100), 4: ("EUR", 0), 5: ("USD", 900)}
OPENING |= {6: ("EUR", 50)}


def crafted_jobs(seed: int) -> tuple[Jobs, tuple[str, list[dict[str, Any]]], str]:
    """Single-transfer jobs (and a few of two or three) on six accounts: conflicts, overdrafts,
    a currency mismatch, an unknown account, ids sent by two jobs (same content, other content),
    a job id run twice at once; and a job committed before them, replayed among them."""
    rng = random.Random(seed)
    eur = [1, 2, 3, 4, 6]
    jobs: Jobs = []
    for n in range(40):
        source, target = rng.sample(eur, 2)
        jobs.append((f"gc-{seed}-{n:03}", [transfer(source, target, rng.randrange(1, 260))]))
    jobs.insert(3, ("gc-mismatch", [transfer(1, 5, 10)]))
    jobs.insert(5, ("gc-unknown", [transfer(1, 99, 10)]))
    jobs.insert(7, ("gc-pair", [transfer(2, 1, 30), transfer(1, 4, 480)]))
    repeated = transfer(3, 4, 20)
    jobs.insert(9, ("gc-repeat", [repeated, {**repeated, "amount_cents": 21}, transfer(4, 3, 5)]))
    # The same ids in two jobs: the later one finds the earlier one's row.
    jobs.insert(12, (f"gc-{seed}-again", [jobs[2][1][0]]))
    jobs.insert(15, (f"gc-{seed}-reused", [{**jobs[4][1][0], "amount_cents": 1}]))
    # One job id twice at once (a stalled run and its run again): one outcome, reported twice.
    twice = jobs[18]
    jobs.insert(20, twice)
    earlier = ("gc-earlier", [transfer(2, 6, 40)])
    jobs.insert(10, earlier)  # committed before the others start: replayed among them
    return jobs, earlier, twice[0]


async def test_jobs_written_in_groups_get_what_each_would_get_alone_in_order(
    ctx: dict[str, Any], engine: AsyncEngine, observer: asyncpg.Connection
) -> None:
    jobs, earlier, twice_id = crafted_jobs(seed=3)
    opening = {i: cents for i, (_, cents) in OPENING.items()}
    commits = commits_of(ctx)

    await reset(engine, OPENING)
    first_run = await execute(transfer_funds, job_ctx(ctx, earlier[0]), transfers=earlier[1])
    grouped = await run_at_once(ctx, jobs, spacing_s=0.001)
    grouped_books = await books(observer)
    written_by = await transactions_that_wrote(observer)
    stats = (commits.groups, commits.grouped_jobs, commits.fallbacks)

    await reset(engine, OPENING)
    assert await execute(transfer_funds, job_ctx(ctx, earlier[0]), transfers=earlier[1]) == (
        first_run
    )
    alone = await run_one_by_one(ctx, jobs)
    alone_books = await books(observer)

    assert grouped == alone
    assert grouped_books == alone_books
    # They were written in groups: far fewer transactions than jobs, no group fell back.
    groups, grouped_jobs, fallbacks = stats
    assert groups >= 3 and grouped_jobs >= 20 and fallbacks == 0, stats
    assert written_by < len(jobs) - 10
    # The replayed job reported its first run, wherever it ran.
    assert grouped[jobs.index(earlier)] == first_run
    twice = [r for (job_id, _), r in zip(jobs, grouped, strict=True) if job_id == twice_id]
    assert len(twice) == 2 and twice[0] == twice[1]
    outcomes = Counter((r["status"], r["reason"]) for result in grouped for r in result["results"])
    assert outcomes[("duplicate", ALREADY_RECORDED)] >= 1
    assert outcomes[("rejected", ID_REUSED)] == 1
    assert outcomes[("duplicate", REPEATED_IN_BATCH)] == 1
    assert sum(n for (status, reason), n in outcomes.items() if "insufficient" in str(reason)) > 3
    results = dict(zip([job_id for job_id, _ in jobs], grouped, strict=True))
    check_books(results, dict(jobs), grouped_books, opening)


@pytest.mark.parametrize("seed", [1, 2])
async def test_random_single_transfer_jobs_at_once_equal_one_by_one(
    ctx: dict[str, Any], engine: AsyncEngine, observer: asyncpg.Connection, seed: int
) -> None:
    """Many jobs on few accounts, ids shared between jobs; all at once, so a few large groups."""
    rng = random.Random(seed)
    accounts = dict.fromkeys(range(1, 9), ("EUR", 200))
    sent: list[dict[str, Any]] = []
    jobs: Jobs = []
    for n in range(120):
        if sent and rng.random() < 0.15:
            batch = [rng.choice(sent)]  # an id another job sends too
        else:
            source, target = rng.sample(range(1, 9), 2)
            batch = [transfer(source, target, rng.randrange(1, 150))]
            sent.extend(batch)
        jobs.append((f"rnd-{seed}-{n:03}", batch))

    await reset(engine, accounts)
    grouped = await run_at_once(ctx, jobs, spacing_s=0)
    grouped_books = await books(observer)
    assert await transactions_that_wrote(observer) <= 3
    await reset(engine, accounts)
    alone = await run_one_by_one(ctx, jobs)

    assert grouped == alone
    assert grouped_books == await books(observer)
    results = dict(zip([job_id for job_id, _ in jobs], grouped, strict=True))
    check_books(results, dict(jobs), grouped_books, dict.fromkeys(accounts, 200))


async def test_a_group_the_database_refuses_falls_back_to_each_job_alone_in_order(
    ctx: dict[str, Any], engine: AsyncEngine, observer: asyncpg.Connection
) -> None:
    """A rule the job does not know (a cap on account 2) refuses one job's transfer: the group
    rolls back, each job runs alone, and only that transfer is rejected."""
    accounts = {1: ("EUR", 1_000), 2: ("EUR", 0), 3: ("EUR", 100), 4: ("EUR", 0)}
    jobs: Jobs = [
        ("cap-1", [transfer(1, 2, 400)]),
        ("cap-2", [transfer(1, 2, 200)]),  # 2 would hold 600: over the cap
        ("cap-3", [transfer(3, 4, 100)]),
        ("cap-4", [transfer(1, 2, 50), transfer(3, 4, 1)]),
    ]
    await reset(engine, accounts)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "alter table accounts"
                " add constraint test_cap check (id <> 2 or balance_cents <= 500)"
            )
        )
    commits = commits_of(ctx)
    try:
        with capture_logs() as logs:
            grouped = await run_at_once(ctx, jobs, spacing_s=0)
        grouped_books = await books(observer)
        await reset(engine, accounts)
        alone = await run_one_by_one(ctx, jobs)
        assert await books(observer) == grouped_books
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("alter table accounts drop constraint test_cap"))

    assert grouped == alone
    assert (commits.groups, commits.fallbacks) == (0, 1)
    assert [(r["status"], r["reason"]) for result in grouped for r in result["results"]] == [
        ("applied", None),
        ("rejected", "refused by the database: test_cap"),
        ("applied", None),
        ("applied", None),
        ("rejected", "insufficient funds: from_account holds 0 cents, amount_cents is 1"),
    ]
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [entry["event"] for entry in warnings] == [
        "transfers.group_fallback",
        "transfers.fallback",  # cap-2's own batch write, then its transfer on its own
        "transfers.refused",
    ]
    assert warnings[0]["jobs"] == 4 and warnings[0]["sqlstate"] == "23514"
    assert grouped_books[0] == {1: 550, 2: 450, 3: 0, 4: 100}


async def wait_for_lock_wait(conn: asyncpg.Connection, count: int = 1) -> None:
    for _ in range(500):
        waiting = await conn.fetchval(
            "select count(*) from pg_stat_activity"
            " where datname = current_database() and application_name = 'etl-worker'"
            " and wait_event_type = 'Lock'"
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no job waited for a lock")


async def test_newcomers_wait_for_the_transaction_in_flight_then_go_together(
    ctx: dict[str, Any], engine: AsyncEngine, observer: asyncpg.Connection, database_url: str
) -> None:
    """While one transaction runs (here held up by another session's lock), jobs arriving wait
    for it; they then go as one group. A job cancelled while it waits is left out."""
    await reset(engine, dict.fromkeys(range(1, 9), ("EUR", 100)))
    commits = commits_of(ctx)
    other = await connect(database_url)
    try:
        async with other.transaction():
            await other.execute("select 1 from accounts where id = 1 for update")
            first = asyncio.create_task(
                execute(transfer_funds, job_ctx(ctx, "held"), transfers=[transfer(1, 2, 10)])
            )
            await wait_for_lock_wait(observer)
            later = [
                asyncio.create_task(
                    execute(transfer_funds, job_ctx(ctx, f"later-{n}"), transfers=[t])
                )
                for n, t in enumerate([transfer(3, 4, 10), transfer(5, 6, 10), transfer(7, 8, 10)])
            ]
            await asyncio.sleep(0.05)
            assert not any(task.done() for task in later)
            later[1].cancel()
        results = await asyncio.gather(first, *later, return_exceptions=True)
    finally:
        await other.close()

    assert isinstance(results[2], asyncio.CancelledError)
    assert [r["applied"] for r in results if isinstance(r, dict)] == [1, 1, 1]
    assert (commits.alone, commits.groups, commits.grouped_jobs) == (1, 1, 2)
    final, ledger = await books(observer)
    assert final == {1: 90, 2: 110, 3: 90, 4: 110, 5: 100, 6: 100, 7: 90, 8: 110}
    assert sorted(row[5] for row in ledger.values()) == ["held", "later-0", "later-2"]
    assert await transactions_that_wrote(observer) == 2


async def test_a_job_cancelled_while_its_group_writes_is_committed_and_its_run_again_replays(
    ctx: dict[str, Any],
    engine: AsyncEngine,
    observer: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await reset(engine, {1: ("EUR", 100), 2: ("EUR", 0), 3: ("EUR", 100), 4: ("EUR", 0)})
    work: Jobs = [("w-1", [transfer(1, 2, 30)]), ("w-2", [transfer(3, 4, 40)])]
    tasks: list[asyncio.Task[Any]] = []
    write = jobs.transfers.group.write_group

    async def cancel_then_write(driver: Any, **kwargs: Any) -> None:
        tasks[1].cancel()  # a shutdown or `etl cancel` reaching w-2 now
        await write(driver, **kwargs)

    monkeypatch.setattr(jobs.transfers.group, "write_group", cancel_then_write)
    tasks.extend(
        asyncio.create_task(execute(transfer_funds, job_ctx(ctx, j), transfers=b)) for j, b in work
    )
    first, second = await asyncio.gather(*tasks, return_exceptions=True)

    assert isinstance(second, asyncio.CancelledError)
    assert isinstance(first, dict) and first["applied"] == 1
    committed = await books(observer)
    assert committed[0] == {1: 70, 2: 30, 3: 60, 4: 40}
    # Run again (arq requeues a job stopped by a shutdown): it reports what was committed for it.
    again = await execute(transfer_funds, job_ctx(ctx, "w-2"), transfers=work[1][1])
    assert again["results"] == [{"id": work[1][1][0]["id"], "status": "applied", "reason": None}]
    assert await books(observer) == committed


async def test_a_lone_job_and_a_large_one_take_the_batch_path(
    ctx: dict[str, Any],
    engine: AsyncEngine,
    observer: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await reset(engine, {1: ("EUR", 1_000), 2: ("EUR", 0)})
    commits = commits_of(ctx)
    written = jobs.transfers.job.apply_set_based
    calls: list[int] = []

    async def count(driver: Any, *, ledger: Any, **kwargs: Any) -> None:
        calls.append(len(ledger))
        await written(driver, ledger=ledger, **kwargs)

    monkeypatch.setattr(jobs.transfers.job, "apply_set_based", count)
    small = await execute(transfer_funds, job_ctx(ctx, "lone"), transfers=[transfer(1, 2, 1)])
    large_batch = [transfer(1, 2, 1) for _ in range(GROUP_JOB_MAX_TRANSFERS + 1)]
    large = await execute(transfer_funds, job_ctx(ctx, "large"), transfers=large_batch)

    assert (small["applied"], large["applied"]) == (1, GROUP_JOB_MAX_TRANSFERS + 1)
    assert calls == [1, GROUP_JOB_MAX_TRANSFERS + 1]
    assert (commits.alone, commits.groups) == (1, 0)  # the large job never met the group commit
    assert (await balances(observer))[2] == GROUP_JOB_MAX_TRANSFERS + 2


async def test_single_transfer_jobs_through_the_real_worker_are_written_in_groups(
    settings: Settings,
    redis: ArqRedis,
    engine: AsyncEngine,
    observer: asyncpg.Connection,
    clean_db: None,
) -> None:
    rng = random.Random(5)
    opening = dict.fromkeys(range(1, 7), 300)
    await seed_accounts(engine, {i: ("EUR", cents) for i, cents in opening.items()})
    sent_by: dict[str, list[dict[str, Any]]] = {}
    sent: list[dict[str, Any]] = []
    for n in range(80):
        if sent and n % 9 == 0:
            batch = [rng.choice(sent)]
        else:
            source, target = rng.sample(range(1, 7), 2)
            batch = [transfer(source, target, rng.randrange(1, 200))]
            sent.extend(batch)
        job = await redis.enqueue_job(
            "transfer_funds",
            transfers=batch,
            _queue_name=settings.queue_name,
            _job_id=f"w-{uuid.uuid4().hex[:8]}-{n:03}",
        )
        assert job is not None
        sent_by[job.job_id] = batch

    worker = await run_burst(settings, redis, max_jobs=8)

    assert (worker.jobs_complete, worker.jobs_failed) == (80, 0)
    results = {
        job_id: await Job(
            job_id, redis, _queue_name=settings.queue_name, _deserializer=redis.job_deserializer
        ).result(timeout=5)
        for job_id in sent_by
    }
    state = await books(observer)
    check_books(results, sent_by, state, opening)
    # Written in groups: fewer transactions than jobs that wrote a row.
    assert await transactions_that_wrote(observer) < len({row[5] for row in state[1].values()})


def test_plan_group_decides_each_job_as_plan_batch_would_alone_after_the_ones_before() -> None:
    def item(source: int, target: int, amount: int, transfer_id: UUID | None = None) -> Any:
        return TransferItem(
            id=transfer_id or uuid.uuid4(),
            from_account=source,
            to_account=target,
            amount_cents=amount,
        )

    accounts = [(1, 1_000, "EUR"), (2, 0, "EUR"), (3, 50, "EUR")]
    applied = item(1, 2, 600)
    earlier_row = item(3, 1, 5)
    recorded = {
        earlier_row.id: RecordedTransfer(3, 1, 5, "applied", None, "before"),
    }
    group: list[tuple[Sequence[TransferItem], str | None]] = [
        ([applied], "a"),
        ([item(1, 2, 500)], "b"),  # 1 holds 400 after a
        ([applied], "c"),  # a's id, same content: a duplicate of a's row
        ([item(1, 2, 7, applied.id)], "d"),  # a's id, other content
        ([applied], "a"),  # a again: a replay of its own row
        ([item(2, 3, 600), item(2, 3, 1, earlier_row.id)], "e"),
        ([earlier_row], "before"),  # replay of a job committed before the group
    ]
    plan = plan_group(group, accounts=accounts, recorded=recorded)

    # The same, job by job, each alone on what the ones before it left.
    state = {row[0]: row for row in accounts}
    ledger = dict(recorded)
    for (transfers, job_id), got in zip(group, plan.plans, strict=True):
        own = {t.id: ledger[t.id] for t in transfers if t.id in ledger}
        alone = plan_batch(transfers, accounts=list(state.values()), recorded=own, job_id=job_id)
        assert got == alone
        for account_id, delta in alone.deltas.items():
            i, cents, code = state[account_id]
            state[account_id] = (i, cents + delta, code)
        for row in alone.ledger:
            ledger[row.id] = RecordedTransfer(*row[1:], job_id)
    decisions = [[(d.status, d.reason) for d in p.decisions] for p in plan.plans]
    assert decisions == [
        [("applied", None)],
        [("rejected", "insufficient funds: from_account holds 400 cents, amount_cents is 500")],
        [("duplicate", ALREADY_RECORDED)],
        [("rejected", ID_REUSED)],
        [("applied", None)],
        [("applied", None), ("rejected", ID_REUSED)],
        [("applied", None)],
    ]
    assert plan.deltas == {1: -600, 3: 600}  # 2 received 600 and sent it on: left unchanged
    assert [(entry.row.id, entry.job_id) for entry in plan.ledger] == [
        (applied.id, "a"),
        (plan.ledger[1].row.id, "b"),
        (group[5][0][0].id, "e"),
    ]
    assert summarise(group[4][0], plan.plans[4].decisions).applied == 1
