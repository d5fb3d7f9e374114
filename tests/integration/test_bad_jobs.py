"""Jobs the worker cannot run (not JSON, unknown name) fail clearly; the worker stays healthy."""

from __future__ import annotations

import time

from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import Job

from tests.support.worker_helpers import run_burst
from worker.errors import JobError
from worker.settings import Settings


async def _failure(redis: ArqRedis, settings: Settings, job_id: str) -> JobError:
    info = await Job(
        job_id, redis, _queue_name=settings.queue_name, _deserializer=redis.job_deserializer
    ).result_info()
    assert info is not None and info.success is False
    assert isinstance(info.result, JobError)
    return info.result


async def test_not_json_and_unknown_name_fail_and_the_next_job_runs(
    settings: Settings, redis: ArqRedis, clean_db: None
) -> None:
    now_ms = int(time.time() * 1000)
    garbage_id = f"garbage-{now_ms}"
    await redis.psetex(job_key_prefix + garbage_id, 60_000, b"\x80\x04 not json at all")
    await redis.zadd(settings.queue_name, {garbage_id: now_ms})
    unknown = await redis.enqueue_job("drop_all_tables", _queue_name=settings.queue_name)
    ping = await redis.enqueue_job("ping", _queue_name=settings.queue_name, _defer_by=0.05)
    assert unknown is not None and ping is not None

    worker = await run_burst(settings, redis)

    assert (worker.jobs_failed, worker.jobs_complete) == (2, 1)
    garbage = await _failure(redis, settings, garbage_id)
    assert (garbage.kind, garbage.message) == (
        "InvalidJob",
        "invalid job record: not JSON (UnicodeDecodeError)",
    )
    missing = await _failure(redis, settings, unknown.job_id)
    assert (missing.kind, missing.message) == (
        "JobExecutionFailed",
        "function 'drop_all_tables' not found",
    )
    assert await ping.result(timeout=5) == {"pong": True, "database": True}
