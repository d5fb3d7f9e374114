"""`transfer_funds`: move money between accounts; each transfer all-or-nothing, each id once.

A batch runs in one transaction. It locks the batch's accounts in ascending id order (so two
batches sharing accounts queue behind each other instead of deadlocking), reads the ledger's rows
for the batch's ids, lets `jobs.transfers.plan` decide every transfer in memory, and writes the
result with one statement inside one savepoint: one UPDATE of the net balance changes and one
INSERT of the ledger rows, each marked with the arq job id that wrote it. A savepoint per
transfer would cost four round trips each and, past 64 of them, overflow PostgreSQL's
subtransaction cache, slowing every other session.

A replay tells the truth. If the worker dies after the transaction committed but before arq
stored the result, arq runs the job again under the same job id; the ledger's rows carry that id,
so the rules report each transfer as the first run decided it (same counts, statuses, reasons),
and nothing is written or moved again. A later job (another job id) sending the same ids gets
`duplicate` with the recorded status and reason; the same id with other accounts or amount is
rejected (`id reused with different content`). Reading the rows back costs no extra round trip:
the one query that finds which ids are recorded returns their rows, and none for new ids.

If that statement fails on something the rules did not foresee (another job recorded one of the
ids a moment ago, a constraint the rules do not know), the job rolls back to the savepoint and
writes the transfers one by one, each in its own savepoint, asking the same rules: the outcomes
are the same, except that a transfer the database refuses is rejected on its own (an id another
job recorded meanwhile is judged by that job's row, as above).

Large batches queue for one advisory lock before they lock any account. Two of them nearly always
share accounts; the second would wait on the first's rows and then, in READ COMMITTED, re-check
every row the first updated (EvalPlanQual) as it resumes, several times the CPU of a batch run
alone (README, "Measured design choices"). Queued up front they run one after another at full
speed. Small jobs skip the queue: they lock a few rows, and a row or two re-checked costs
nothing.

Small jobs (up to GROUP_JOB_MAX_TRANSFERS transfers) that run at the same time in one worker are
written together, one transaction for all of them (group commit, `jobs.transfers.group`): the
same locks in the same order, each job decided as if it ran alone after the jobs before it, each
ledger row marked with its own job's id, so replays and duplicates read exactly as above. A group
that fails for any reason rolls back whole and its jobs run alone, one after another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.backoff import backoff_delay
from jobs.errors import sqlstate_of
from jobs.models import TransferItem, TransferPayload, TransferResult
from jobs.spec import JobRun, etl_job
from jobs.transfers.group import GROUP_JOB_MAX_TRANSFERS, group_commit_for
from jobs.transfers.ledger import LEDGER_KEY, apply_set_based, lock_accounts, recorded_transfers
from jobs.transfers.plan import (
    AccountRow,
    BatchState,
    Decision,
    LedgerRow,
    accounts_to_lock,
    plan_batch,
    transfer_deltas,
)

log = structlog.get_logger("jobs.transfers")

SAVEPOINT = "SAVEPOINT transfer_batch"
RELEASE_SAVEPOINT = "RELEASE SAVEPOINT transfer_batch"
ROLLBACK_TO_SAVEPOINT = "ROLLBACK TO SAVEPOINT transfer_batch"

# Deadlock and serialization failure: the whole batch is tried again at once, in this job, a
# few times; a new arq try would wait at least the runner's first backoff (a second by default).
# After the last attempt the error goes to the runner, which retries the job later.
RETRY_SQLSTATES = frozenset({"40P01", "40001"})
ATTEMPTS = 3


@etl_job(name="transfer_funds", payload=TransferPayload, result=TransferResult, timeout_s=300)
async def transfer_funds(run: JobRun, payload: TransferPayload) -> TransferResult:
    """Apply up to 10,000 transfers in order; report each one's outcome in input order."""
    transfers = payload.transfers
    if len(transfers) <= GROUP_JOB_MAX_TRANSFERS:
        commit = group_commit_for(run.sessionmaker, alone=apply_alone)
        decisions = await commit.submit(run, transfers)
    else:
        decisions = await apply_alone(run, transfers)
    return summarise(transfers, decisions)


async def apply_alone(run: JobRun, transfers: Sequence[TransferItem]) -> list[Decision]:
    """The batch in a transaction of its own; a deadlock or serialization failure tries again."""
    attempt = 1
    while True:
        try:
            return await apply_batch(run, transfers)
        except Exception as exc:
            code = sqlstate_of(exc)
            if code not in RETRY_SQLSTATES or attempt >= ATTEMPTS:
                raise
            log.warning("transfers.retry", attempt=attempt, sqlstate=code)
            await asyncio.sleep(backoff_delay(attempt, base_s=0.02, cap_s=0.2))
            attempt += 1


def summarise(transfers: Sequence[TransferItem], decisions: Sequence[Decision]) -> TransferResult:
    """The job's result: counts, and each transfer's outcome in input order.

    Only a duplicate carries what the ledger recorded for its id: a replayed outcome is reported
    as the first run reported it, and a reused id is rejected for that reason alone.
    """
    counts = {"applied": 0, "rejected": 0, "duplicate": 0}
    results = []
    for transfer, decision in zip(transfers, decisions, strict=True):
        status, recorded = decision.status, decision.recorded
        counts[status] += 1
        outcome = {"id": transfer.id, "status": status, "reason": decision.reason}
        if recorded is not None and status == "duplicate":
            outcome["recorded_status"], outcome["recorded_reason"] = recorded
        results.append(outcome)
    # Validating plain dicts in one call is faster than building 10,000 models one by one.
    return TransferResult.model_validate({**counts, "results": results})


async def apply_batch(run: JobRun, transfers: Sequence[TransferItem]) -> list[Decision]:
    """One transaction: lock, decide, write set-based; per transfer if that fails."""
    async with run.sessionmaker() as session, session.begin():
        conn = await session.connection()
        driver, accounts = await lock_accounts(conn, accounts_to_lock(transfers))
        job_id = run.job_id or None
        recorded = await recorded_transfers(driver, transfers)
        plan = plan_batch(transfers, accounts=accounts, recorded=recorded, job_id=job_id)
        if not plan.ledger:
            return plan.decisions  # all in the ledger already: nothing to write
        # This savepoint is set through the raw connection: SQLAlchemy's begin_nested() costs
        # several times as much CPU for SAVEPOINT and RELEASE, a large share of what a
        # one-transfer job spends in Python (README, "Measured design choices"). Anything but a
        # refusal rolls the transaction back.
        await driver.execute(SAVEPOINT)
        try:
            await apply_set_based(driver, deltas=plan.deltas, ledger=plan.ledger, job_id=job_id)
        except asyncpg.PostgresError as exc:
            if not _refused(exc):
                raise
            await driver.execute(ROLLBACK_TO_SAVEPOINT)
            log.warning(
                "transfers.fallback",
                sqlstate=exc.sqlstate,
                constraint=getattr(exc, "constraint_name", None),
                transfers=len(transfers),
            )
        else:
            await driver.execute(RELEASE_SAVEPOINT)
            return plan.decisions
        # The accounts were locked before the savepoint, so they stay locked and `accounts`
        # still describes them.
        return await apply_one_by_one(
            run, conn=conn, driver=driver, transfers=transfers, accounts=accounts
        )


async def apply_one_by_one(
    run: JobRun,
    *,
    conn: AsyncConnection,
    driver: Any,
    transfers: Sequence[TransferItem],
    accounts: Sequence[AccountRow],
) -> list[Decision]:
    """The same rules, one savepoint per transfer: what the database refuses stays on its own."""
    # Read again: the set-based write may have failed because another job has just recorded some
    # of these ids, and this statement sees what it committed.
    job_id = run.job_id or None
    state = BatchState(
        accounts=accounts, recorded=await recorded_transfers(driver, transfers), job_id=job_id
    )
    decisions: list[Decision] = []
    for done, transfer in enumerate(transfers, start=1):
        decision = state.decide(transfer)
        while decision.writes:
            written = await record_one(
                conn=conn, driver=driver, transfer=transfer, want=decision, job_id=job_id
            )
            if written is not None:
                decision = written
                break
            # Another job recorded this id a moment ago: its row decides, as in the set-based path.
            # (A key conflict is raised only once that row is committed, so this read sees it and
            # the loop ends.)
            state.learn(await recorded_transfers(driver, [transfer]))
            decision = state.decide(transfer)
        state.settle(transfer, decision)
        decisions.append(decision)
        await run.progress(transfers_done=done, transfers=len(transfers))
    return decisions


async def record_one(
    *,
    conn: AsyncConnection,
    driver: Any,
    transfer: TransferItem,
    want: Decision,
    job_id: str | None,
) -> Decision | None:
    """Write one transfer in its own savepoint; return the outcome the database accepted.

    None: the ledger holds the id already (another job committed it since it was read).
    """
    try:
        async with conn.begin_nested():
            deltas = transfer_deltas(transfer) if want.status == "applied" else {}
            ledger = [LedgerRow.of(transfer, want)]
            await apply_set_based(driver, deltas=deltas, ledger=ledger, job_id=job_id)
        return want
    except asyncpg.PostgresError as exc:
        if isinstance(exc, asyncpg.UniqueViolationError) and exc.constraint_name == LEDGER_KEY:
            return None
        if want.status != "applied" or not _refused(exc):
            raise
        refused = getattr(exc, "constraint_name", None) or exc.sqlstate
    log.warning("transfers.refused", transfer_id=str(transfer.id), by=refused)
    return await record_one(
        conn=conn,
        driver=driver,
        transfer=transfer,
        want=Decision("rejected", f"refused by the database: {refused}"),
        job_id=job_id,
    )


def _refused(exc: asyncpg.PostgresError) -> bool:
    """A constraint or data error: the data is refused, the connection and transaction are fine."""
    return str(exc.sqlstate)[:2] in {"22", "23"}
