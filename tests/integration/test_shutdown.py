"""SIGTERM: the worker stops taking jobs, lets running ones finish within ETL_SHUTDOWN_GRACE, then
cancels the rest, whose transactions roll back and which the next worker runs again.

The worker runs in a process of its own, with arq's signal handling, as in production.
"""

from __future__ import annotations

from pathlib import Path

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.processes import (
    WorkerProcess,
    stored_result,
    wait_for_result,
    wait_until_running,
)
from worker.settings import Settings


def worker_env(settings: Settings, *, grace_s: float) -> dict[str, str]:
    assert settings.database_url and settings.redis_url
    return {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "ETL_QUEUE": settings.queue_name,
        "ETL_SHUTDOWN_GRACE": str(grace_s),
        "ETL_IMPORT_DIR": str(settings.import_dir),
        "ETL_EXPORT_DIR": str(settings.export_dir),
    }


async def start_worker(settings: Settings, log_path: Path, *, grace_s: float) -> WorkerProcess:
    return await WorkerProcess(worker_env(settings, grace_s=grace_s), log_path=log_path).started()


async def enqueue(redis: ArqRedis, settings: Settings, function: str, **kwargs: object) -> str:
    job = await redis.enqueue_job(function, _queue_name=settings.queue_name, **kwargs)
    assert job is not None
    return job.job_id


async def customer_count(engine: AsyncEngine, key: str) -> int:
    async with engine.connect() as conn:
        found = await conn.scalar(
            text("select count(*) from customers where external_id = :k"), {"k": key}
        )
    return int(found or 0)


async def test_sigterm_lets_a_running_job_finish_and_takes_no_new_one(
    settings: Settings, redis: ArqRedis, engine: AsyncEngine, clean_db: None, tmp_path: Path
) -> None:
    worker = await start_worker(settings, tmp_path / "worker.log", grace_s=10)
    try:
        running = await enqueue(redis, settings, "nap", key="finishes", seconds=1.5)
        await wait_until_running(redis, running, within_s=10)
        worker.terminate()
        # Once arq has seen the signal, a newly queued job must stay queued.
        await worker.wait_for_event("Setting allow_pick_jobs to `False`", within_s=5)
        late = await enqueue(redis, settings, "nap", key="late", seconds=0)
        assert await worker.exited(within_s=10) == 0
    finally:
        worker.kill()

    record = await stored_result(redis, running)
    assert record is not None and record["s"] is True
    assert record["r"] == {"key": "finishes", "tries": 1}
    assert await customer_count(engine, "finishes") == 1
    # Enqueued after the signal: left in the queue for another worker.
    assert await stored_result(redis, late) is None
    assert await redis.zscore(settings.queue_name, late) is not None
    assert await customer_count(engine, "late") == 0
    events = [e["event"] for e in worker.events()]
    assert "worker.stopped" in events
    assert any(e.startswith("shutdown on SIGTERM, wait complete") for e in events), events


async def test_sigterm_cancels_a_job_past_the_grace_and_the_next_worker_runs_it_again(
    settings: Settings, redis: ArqRedis, engine: AsyncEngine, clean_db: None, tmp_path: Path
) -> None:
    worker = await start_worker(settings, tmp_path / "first.log", grace_s=1)
    try:
        job_id = await enqueue(
            redis, settings, "nap", key="too-long", seconds=60, seconds_when_retried=0
        )
        await wait_until_running(redis, job_id, within_s=10)
        worker.terminate()
        # The grace (1 s) and the cancellation, not the job's 60 s.
        assert await worker.exited(within_s=10) == 0
    finally:
        worker.kill()

    # Cancelled inside its transaction: nothing committed, no result, back in the queue, and not
    # held as in progress (it can run at once, not ETL_REQUEUE_AFTER later).
    assert await customer_count(engine, "too-long") == 0
    assert await stored_result(redis, job_id) is None
    assert await redis.zscore(settings.queue_name, job_id) is not None
    assert await redis.exists(in_progress_key_prefix + job_id) == 0
    finished = [e for e in worker.events() if e["event"] == "job.finished"]
    assert [(e["job_id"], e["status"]) for e in finished] == [(job_id, "cancelled")]

    again = await start_worker(settings, tmp_path / "second.log", grace_s=1)
    try:
        record = await wait_for_result(redis, job_id, within_s=20)
    finally:
        again.terminate()
        await again.exited(within_s=10)
    assert record["s"] is True
    assert record["r"] == {"key": "too-long", "tries": 2}
    assert await customer_count(engine, "too-long") == 1
