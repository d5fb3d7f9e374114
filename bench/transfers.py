"""Transfers: `transfer_funds` in batches of 1,000, and one transfer per job through a real arq
worker at concurrency 8, both against pgbench running the same transfer as a SQL script.
"""

from __future__ import annotations

from bench.context import BenchContext
from bench.data import insert_accounts, transfers
from bench.enqueue import enqueue_batch
from bench.harness import BenchError, Measured, Row, compare, say, stopwatch
from bench.pgclient import pgbench
from bench.workers import project_worker, run_burst
from jobs.models import TransferResult
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
    batches = [
        transfers(count=BATCH, accounts=accounts, seed=seed) for seed in range(batched // BATCH)
    ]
    singles = transfers(count=single, accounts=accounts, seed=10_000)

    async def fresh_accounts() -> None:
        await bench.reset(insert_accounts(accounts), analyze="accounts, transfers")

    async def baseline() -> Measured:
        return await pgbench(
            bench.client, script=script, clients=CONCURRENCY, threads=2,
            seconds=bench.pgbench_seconds,
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

    async def one_per_job() -> Measured:
        queue = bench.queue_name()
        pool = await connect(bench.settings)
        try:
            await enqueue_batch(
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
        return Measured(seconds=seconds, rows=single)

    say(f"transfers: {accounts:,} accounts, {batched:,} batched, {single:,} single-transfer jobs")
    pgbench_name = f"pgbench -c {CONCURRENCY} -j 2, {bench.pgbench_seconds} s"
    return [
        await compare(
            scenario=f"transfer_funds, batches of {BATCH:,}",
            rows=batched,
            rounds=bench.rounds,
            prepare=fresh_accounts,
            subject=in_batches,
            baseline_name=pgbench_name,
            baseline=baseline,
            target=10.0,
        ),
        await compare(
            scenario=f"transfer_funds, 1 per job, worker max_jobs={CONCURRENCY}",
            rows=single,
            rounds=bench.rounds,
            prepare=fresh_accounts,
            subject=one_per_job,
            baseline_name=pgbench_name,
            baseline=baseline,
            target=0.3,
        ),
    ]
