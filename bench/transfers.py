"""Transfers: `transfer_funds` in batches of 1,000 (in-process and through a real worker), and one
transfer per job through a real arq worker at concurrency 8, against pgbench running transfers in
SQL two ways:

- per transfer (`pgbench_script`): one transfer per transaction, at -c 8, what an application
  doing one transfer per request does;
- 1,000 per transaction (`BATCH_FUNCTION`, called by `batch_script`): the batch job's unit of
  work, one transaction applying 1,000 transfers, at -c 1 like the job's batches, which run one
  after another (large batches queue on one advisory lock).

transfer_funds sets no session settings of its own, so pgbench runs on the server's defaults.

Single-transfer jobs running at once in the worker are written together (group commit,
jobs/transfers/group.py); their row's note says how many transactions wrote them and what each
job paid in latency (its duration from arq's start to its finish, p50 and p99).
"""

from __future__ import annotations

import statistics

from bench.context import BenchContext
from bench.data import insert_accounts, transfers
from bench.enqueue import enqueue_batch
from bench.harness import (
    Baseline,
    BenchError,
    Measured,
    Row,
    compare,
    compare_all,
    plural,
    say,
    stopwatch,
)
from bench.pgclient import pgbench
from bench.queue import job_durations_ms, latency_note
from bench.workers import project_worker, run_burst, run_via_worker
from jobs.models import TransferPayload, TransferResult
from jobs.transfers.job import transfer_funds
from worker.redis import connect
from worker.runner import execute

BATCH = 1_000
CONCURRENCY = 8


def pgbench_script(accounts: int) -> str:
    """One transfer as a careful person writes it in SQL: both rows locked in id order."""
    return f"""\\set a random(1, {accounts})
\\set b 1 + (:a + random(0, {accounts - 2})) % {accounts}
\\set amount random(1, 10000)
BEGIN;
SAVEPOINT t;
SELECT id FROM accounts WHERE id IN (:a, :b) ORDER BY id FOR UPDATE;
UPDATE accounts SET balance_cents = balance_cents - :amount, updated_at = now() WHERE id = :a;
UPDATE accounts SET balance_cents = balance_cents + :amount, updated_at = now() WHERE id = :b;
INSERT INTO transfers (id, from_account_id, to_account_id, amount_cents, status)
  VALUES (gen_random_uuid(), :a, :b, :amount, 'applied');
RELEASE SAVEPOINT t;
COMMIT;
"""


BATCH_FUNCTION = """
create or replace function bench_transfer_batch(account_count bigint, n integer)
returns integer language plpgsql as $$
declare
    src bigint[];
    dst bigint[];
    amount bigint[];
    applied integer := 0;
begin
    -- n transfers between distinct random accounts, drawn as the per-transfer script draws one.
    select array_agg(a),
           array_agg(1 + (a + floor(random() * (account_count - 1))::bigint) % account_count),
           array_agg(1 + floor(random() * 10000)::bigint)
      into src, dst, amount
      from (select 1 + floor(random() * account_count)::bigint as a
              from generate_series(1, n)) as drawn;
    -- Every account of the batch locked up front in id order, as transfer_funds does.
    perform 1 from accounts where id = any(src || dst) order by id for update;
    for i in 1 .. n loop
        -- All or nothing per transfer without a subtransaction: the debit happens only if the
        -- balance covers it, and the credit and the applied ledger row only after a debit.
        update accounts set balance_cents = balance_cents - amount[i], updated_at = now()
         where id = src[i] and balance_cents >= amount[i];
        if found then
            update accounts set balance_cents = balance_cents + amount[i], updated_at = now()
             where id = dst[i];
            insert into transfers (id, from_account_id, to_account_id, amount_cents, status,
                                   job_id)
            values (gen_random_uuid(), src[i], dst[i], amount[i], 'applied', 'pgbench');
            applied := applied + 1;
        else
            insert into transfers (id, from_account_id, to_account_id, amount_cents, status,
                                   reason, job_id)
            values (gen_random_uuid(), src[i], dst[i], amount[i], 'rejected',
                    'insufficient funds', 'pgbench');
        end if;
    end loop;
    return applied;
end
$$
"""
BATCH_NOTE = (
    "pgbench -c 1 calls bench_transfer_batch (PL/pgSQL) once per transaction: draws 1,000 "
    "transfers between random accounts, locks all their accounts in id order, then per "
    "transfer a conditional debit (only if the balance covers it), the credit and a ledger "
    "row, so each transfer is all or nothing without a savepoint; it skips the job's ledger "
    "look-up of the ids (the primary key refuses a repeat) and its currency check; rates "
    "count transfers"
)
PER_TRANSFER_NOTE = (
    "pgbench runs one transfer per transaction (savepoint, both rows locked in id order, two "
    "UPDATEs, a ledger INSERT); rates count transfers"
)


def batch_script(accounts: int) -> str:
    return f"SELECT bench_transfer_batch({accounts}, {BATCH});\n"


def sizes(rows: int) -> tuple[int, int, int]:
    """(accounts, transfers in batches, single-transfer jobs) for a run of N rows."""
    accounts = max(1_000, rows // 100)
    batched = max(BATCH, rows // 10 // BATCH * BATCH)
    single = max(200, rows // 200)
    return accounts, batched, single


async def scenarios(bench: BenchContext) -> list[Row]:
    accounts, batched, single = sizes(bench.rows)
    script = bench.workdir / "transfer.sql"
    script.write_text(pgbench_script(accounts))
    per_transaction = bench.workdir / "transfer_batch.sql"
    per_transaction.write_text(batch_script(accounts))
    await bench.sql(BATCH_FUNCTION)
    batches = [
        transfers(count=BATCH, accounts=accounts, seed=seed) for seed in range(batched // BATCH)
    ]
    singles = transfers(count=single, accounts=accounts, seed=10_000)
    single_ms: list[float] = []
    transactions: list[int] = []

    async def fresh_accounts() -> None:
        await bench.reset(insert_accounts(accounts), analyze="accounts, transfers")

    async def baseline() -> Measured:
        return await pgbench(
            bench.client, script=script, clients=CONCURRENCY, threads=2,
            seconds=bench.pgbench_seconds,
        )  # fmt: skip

    async def baseline_batches() -> Measured:
        return await pgbench(
            bench.client, script=per_transaction, clients=1, threads=1,
            seconds=bench.pgbench_seconds, per_transaction=BATCH,
        )  # fmt: skip

    async def in_batches() -> Measured:
        applied = 0
        with stopwatch() as elapsed:
            for batch in batches:
                raw = await execute(transfer_funds, bench.job_ctx(), transfers=batch)
                applied += TransferResult.model_validate(raw).applied
        if applied != batched:
            raise BenchError(f"transfer_funds applied {applied} of {batched} transfers")
        return Measured(seconds=elapsed[0], rows=batched)

    async def batches_via_worker() -> Measured:
        requests = [TransferPayload.model_validate({"transfers": batch}) for batch in batches]
        seconds, results = await run_via_worker(
            bench.settings, queue_name=bench.queue_name(), requests=requests
        )
        applied = sum(result.applied for result in results)
        if applied != batched:
            raise BenchError(f"transfer_funds applied {applied} of {batched} transfers")
        return Measured(seconds=seconds, rows=batched)

    async def one_per_job() -> Measured:
        queue = bench.queue_name()
        pool = await connect(bench.settings)
        try:
            ids = await enqueue_batch(
                pool,
                function=transfer_funds.name,
                kwargs=({"transfers": [item]} for item in singles),
                queue_name=queue,
            )
        finally:
            await pool.aclose()
        worker = project_worker(bench.settings, queue_name=queue, max_jobs=CONCURRENCY)
        seconds = await run_burst(worker, jobs=single)
        if await bench.count("transfers where status = 'applied'") != single:
            raise BenchError("the single-transfer jobs did not apply every transfer")
        single_ms.extend(await job_durations_ms(connect(bench.settings), ids))
        # Rows one transaction wrote share its xmin.
        transactions.append(await bench.count("(select distinct xmin::text from transfers) t"))
        return Measured(seconds=seconds, rows=single)

    say(f"transfers: {accounts:,} accounts, {batched:,} batched, {single:,} single-transfer jobs")
    seconds = bench.pgbench_seconds
    pgbench_name = f"pgbench -c {CONCURRENCY} -j 2, {seconds} s"
    batch_name = f"pgbench -c 1, 1,000 per transaction (PL/pgSQL), {seconds} s"
    rows = [
        *await compare_all(
            rows=batched,
            rounds=bench.rounds,
            prepare=fresh_accounts,
            subject=in_batches,
            baselines=[
                Baseline(
                    scenario=f"transfer_funds, batches of {BATCH:,}",
                    name=pgbench_name,
                    run=baseline,
                    target=10.0,
                    note=PER_TRANSFER_NOTE,
                ),
                Baseline(
                    scenario=f"transfer_funds, batches of {BATCH:,}, vs 1,000 per transaction",
                    name=batch_name,
                    run=baseline_batches,
                    target=1.5,
                    note=BATCH_NOTE,
                ),
            ],
        ),
        await compare(
            scenario=f"transfer_funds, batches of {BATCH:,}, via worker, vs 1,000 per transaction",
            rows=batched,
            rounds=bench.rounds,
            prepare=fresh_accounts,
            subject=batches_via_worker,
            baseline_name=batch_name,
            baseline=baseline_batches,
            target=1.5,
            note=(
                f"{plural(batched // BATCH, 'job')} enqueued with EtlClient.enqueue_many (not "
                "timed) and run one at a time by the service's arq worker in burst mode, timed "
                f"from the end of its start-up; {BATCH_NOTE}"
            ),
        ),
        await compare(
            scenario=f"transfer_funds, 1 per job, worker max_jobs={CONCURRENCY}",
            rows=single,
            rounds=bench.rounds,
            prepare=fresh_accounts,
            subject=one_per_job,
            baseline_name=pgbench_name,
            baseline=baseline,
            target=0.5,
            note=f"the worker is timed from the end of its start-up; {PER_TRANSFER_NOTE}",
        ),
    ]
    if transactions:
        written_by = round(statistics.median(transactions))
        rows[-1].note = (
            f"{rows[-1].note}; {single:,} jobs written by {written_by:,} transactions (median of "
            f"rounds); {latency_note(single_ms)}"
        )
    return rows
