"""Cancelling jobs: waiting ones are removed, running ones stop at their next await and roll back.

Running jobs are caught mid-transaction by a real worker polling in the test's loop (the run
handle stalls at a progress report, or the transfer batch after its write), then cancelled
through the client, as `etl cancel` and the dashboard do.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

import jobs.transfers.job as transfers_job
from jobs.exports import pages as export_pages
from jobs.imports import copying
from tests.support.etl_process import cli_env, drop_queue, etl
from tests.support.import_files import CUSTOMER_HEADER, count, customer_line, rows, write
from tests.support.live_worker import running_worker, stall_on_progress, wait_for_state
from tests.support.worker_helpers import run_burst
from worker.client import EtlClient
from worker.errors import CannotCancel, JobCancelled, JobNotFound
from worker.keys import abort_jobs_ss, done_key, failed_key, job_key_prefix
from worker.settings import Settings
from worker.status import list_failed


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"keep_result_s": 600})


@pytest.fixture(autouse=True)
async def _queue_dropped_after(settings: Settings, redis: ArqRedis) -> AsyncIterator[None]:
    yield
    await drop_queue(redis, settings.queue_name)


@pytest.fixture
async def client(settings: Settings, redis: ArqRedis) -> AsyncIterator[EtlClient]:
    async with EtlClient.from_redis(redis, settings) as etl_client:
        yield etl_client


async def _not_run_again(redis: ArqRedis, settings: Settings, job_id: str) -> None:
    """The job has left the queue for good: no record, no queue entry, no pending abort."""
    assert await redis.zscore(settings.queue_name, job_id) is None
    assert not await redis.exists(job_key_prefix + job_id)
    assert await redis.zscore(abort_jobs_ss, job_id) is None


async def test_a_queued_job_is_removed_and_reads_back_cancelled(
    settings: Settings, redis: ArqRedis, client: EtlClient
) -> None:
    handle = await client.ping({"touch_db": False})
    state = await handle.cancel()
    assert (state.state, state.function, state.tries) == ("cancelled", "ping", 0)
    assert state.error is not None and state.error.kind == "CancelledError"
    assert state.kwargs == {"touch_db": False}
    await _not_run_again(redis, settings, handle.job_id)
    worker = await run_burst(settings, redis)
    assert worker.jobs_complete + worker.jobs_failed + worker.jobs_retried == 0
    with pytest.raises(JobCancelled):
        await handle.result(timeout=1)
    # Cancelled is not failed: `etl failed` and the failed index leave it out.
    assert await list_failed(redis, queue_name=settings.queue_name, include_retried=True) == []
    assert await redis.zscore(done_key(settings.queue_name), handle.job_id) is not None
    assert await redis.zscore(failed_key(settings.queue_name), handle.job_id) is None


async def test_a_deferred_job_is_removed(
    settings: Settings, redis: ArqRedis, client: EtlClient
) -> None:
    job = await redis.enqueue_job(
        "ping", touch_db=False, _queue_name=settings.queue_name, _defer_by=3600
    )
    assert job is not None
    assert (await client.status(job.job_id)).state == "deferred"
    assert (await client.cancel(job.job_id)).state == "cancelled"
    await _not_run_again(redis, settings, job.job_id)


async def test_finished_and_unknown_jobs_cannot_be_cancelled(
    settings: Settings, redis: ArqRedis, client: EtlClient
) -> None:
    handle = await client.ping({"touch_db": False})
    await run_burst(settings, redis)
    with pytest.raises(CannotCancel, match=r"already finished \(complete\): nothing to cancel"):
        await handle.cancel()
    assert (await handle.status()).state == "complete"
    with pytest.raises(JobNotFound, match="not found on queue"):
        await client.cancel("no-such-job")
    cancelled = await client.ping({"touch_db": False})
    await cancelled.cancel()
    with pytest.raises(CannotCancel, match=r"already finished \(cancelled\)"):
        await cancelled.cancel()


async def test_a_worker_about_to_start_the_job_leaves_it(
    settings: Settings, redis: ArqRedis, client: EtlClient
) -> None:
    """The cancel touches the in-progress key that a worker WATCHes before it starts a job."""
    handle = await client.ping({"touch_db": False})
    in_progress = f"arq:in-progress:{handle.job_id}"
    async with redis.pipeline(transaction=True) as pipe:
        await pipe.watch(in_progress)
        assert not await pipe.exists(in_progress)
        assert (await handle.cancel()).state == "cancelled"
        pipe.multi()
        pipe.psetex(in_progress, 60_000, b"1")
        with pytest.raises(Exception, match="Watched variable changed"):
            await pipe.execute()
    assert not await redis.exists(in_progress)


async def test_etl_cancel_exit_codes(
    settings: Settings, redis: ArqRedis, client: EtlClient, tmp_path: Path
) -> None:
    env = cli_env(settings, tmp_path)
    handle = await client.ping({"touch_db": False})
    done = await etl("cancel", handle.job_id, env=env, cwd=tmp_path)
    assert (done.code, done.stdout, done.stderr) == (
        0,
        f"job {handle.job_id} (ping) cancelled\n",
        "",
    )
    again = await etl("cancel", handle.job_id, env=env, cwd=tmp_path)
    assert again.code == 1
    assert again.stderr == (
        f"etl: job {handle.job_id} has already finished (cancelled): nothing to cancel\n"
    )
    missing = await etl("cancel", "nope", env=env, cwd=tmp_path)
    assert missing.code == 1
    assert missing.stderr.startswith("etl: job nope not found on queue")
    assert missing.stderr.count("\n") == 1
    status = await etl("status", handle.job_id, env=env, cwd=tmp_path)
    assert status.stdout.startswith(f"job {handle.job_id}: cancelled")


@pytest.fixture
def big_import(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> str:
    """20,000 customers in a file that COPY takes in many small batches."""
    write(settings, "big.csv", CUSTOMER_HEADER, *(customer_line(i) for i in range(1, 20_001)))
    monkeypatch.setattr(copying, "BATCH_BYTES", 32 * 1024)
    return "big.csv"


async def test_a_running_import_is_stopped_mid_copy_and_leaves_nothing(
    settings: Settings,
    redis: ArqRedis,
    client: EtlClient,
    engine: AsyncEngine,
    clean_db: None,
    big_import: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stalled = stall_on_progress(monkeypatch, when=lambda c: c.get("rows", 0) > 0)
    async with running_worker(settings, redis) as worker:
        handle = await client.import_file({"dataset": "customers", "path": big_import})
        await asyncio.wait_for(stalled.wait(), 30)
        assert (await handle.status()).state == "in_progress"
        state = await handle.cancel(wait=15)
        assert state.state == "cancelled"
        assert state.error is not None and state.error.kind == "CancelledError"
        for table in ("customers", "import_rejects", "import_runs"):
            assert await count(engine, table) == 0, table
        await asyncio.sleep(0.5)  # a few polls: nothing runs it again
        await _not_run_again(redis, settings, handle.job_id)
        assert (await handle.status()).state == "cancelled"
        assert (worker.jobs_retried, worker.jobs_failed, worker.jobs_complete) == (0, 1, 0)
        # The worker and its pool are fine: the same import, enqueued again, loads everything.
        monkeypatch.undo()
        again = await client.import_file({"dataset": "customers", "path": big_import})
        result = await again.result(timeout=60)
    assert result.inserted == 20_000
    assert await count(engine, "customers") == 20_000


async def _seed_accounts(engine: AsyncEngine, accounts: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "insert into accounts (id, currency, balance_cents) "
                "select n, 'EUR', 1000 from generate_series(1, :n) n"
            ),
            {"n": accounts},
        )


async def test_a_running_transfer_batch_is_stopped_after_its_write_and_leaves_nothing(
    settings: Settings,
    redis: ArqRedis,
    client: EtlClient,
    engine: AsyncEngine,
    clean_db: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _seed_accounts(engine, 200)
    written = asyncio.Event()
    real = transfers_job.apply_set_based

    async def write_then_stall(driver: Any, **kwargs: Any) -> None:
        await real(driver, **kwargs)
        written.set()
        await asyncio.sleep(60)  # the whole batch is written, not committed

    monkeypatch.setattr(transfers_job, "apply_set_based", write_then_stall)
    batch = [
        {"id": str(uuid.uuid4()), "from_account": i, "to_account": i % 200 + 1, "amount_cents": 7}
        for i in range(1, 201)
    ] * 5
    for item in batch:
        item["id"] = str(uuid.uuid4())
    async with running_worker(settings, redis) as worker:
        handle = await client.transfer_funds({"transfers": batch})
        await asyncio.wait_for(written.wait(), 30)
        assert (await handle.status()).state == "in_progress"
        assert (await handle.cancel(wait=15)).state == "cancelled"
        await asyncio.sleep(0.5)
        await _not_run_again(redis, settings, handle.job_id)
        assert worker.jobs_retried == 0
    assert await count(engine, "transfers") == 0
    balances = await rows(engine, "select count(*), sum(balance_cents) from accounts")
    assert balances == [(200, 200 * 1000)]
    assert await rows(engine, "select count(*) from accounts where balance_cents <> 1000") == [(0,)]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_a_running_export_is_stopped_mid_stream_and_leaves_no_file(
    settings: Settings,
    redis: ArqRedis,
    client: EtlClient,
    engine: AsyncEngine,
    clean_db: None,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "insert into customers (external_id, email, full_name, country, created_at) "
                "select 'c' || n, 'u' || n || '@example.com', repeat('x', 200), 'FR', now() "
                "from generate_series(1, 20000) n"
            )
        )
    monkeypatch.setattr(export_pages, "SEGMENT_PAGES", 1)
    monkeypatch.setattr(export_pages, "CHUNK_PAGES", 1)
    stalled = stall_on_progress(monkeypatch, when=lambda c: c.get("rows", 0) > 0)
    directory = settings.export_dir / "customers"
    async with running_worker(settings, redis):
        handle = await client.export_dataset({"dataset": "customers", "format": fmt})
        await asyncio.wait_for(stalled.wait(), 30)
        partial = os.listdir(directory)
        assert len(partial) == 1 and partial[0].endswith(".tmp")  # mid-stream: a temp file
        assert (await handle.cancel(wait=15)).state == "cancelled"
        await asyncio.sleep(0.3)
        await _not_run_again(redis, settings, handle.job_id)
        assert os.listdir(directory) == []
        monkeypatch.undo()
        again = await client.export_dataset({"dataset": "customers", "format": fmt})
        assert (await again.result(timeout=60)).rows == 20_000


async def test_a_job_aborted_before_a_worker_starts_it_is_recorded_cancelled(
    settings: Settings, redis: ArqRedis, client: EtlClient
) -> None:
    """A job whose worker died holds its in-progress key: the abort waits for its next start."""
    handle = await client.ping({"touch_db": False})
    in_progress = f"arq:in-progress:{handle.job_id}"
    await redis.psetex(in_progress, 60_000, b"1")  # as a killed worker leaves it
    state = await handle.cancel(wait=0.2)
    assert state.state == "in_progress"  # still held: asked to stop, not stopped yet
    assert await redis.zscore(abort_jobs_ss, handle.job_id) is not None
    await redis.delete(in_progress)  # the key lapses; a worker picks the job up
    worker = await run_burst(settings, redis)
    assert (worker.jobs_complete, worker.jobs_failed) == (0, 1)
    final = await wait_for_state(handle.status, "cancelled")
    assert final.error is not None and final.error.kind == "CancelledError"
