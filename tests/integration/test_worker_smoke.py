from __future__ import annotations

from arq.connections import ArqRedis
from arq.jobs import Job

from tests.support.worker_helpers import run_burst
from worker.settings import Settings


async def test_ping_runs_through_the_real_worker(
    settings: Settings, redis: ArqRedis, clean_db: None
) -> None:
    job = await redis.enqueue_job("ping", _queue_name=settings.queue_name)
    assert job is not None
    worker = await run_burst(settings, redis)
    assert worker.jobs_complete == 1
    assert await Job(
        job.job_id, redis, _queue_name=settings.queue_name, _deserializer=redis.job_deserializer
    ).result(timeout=5) == {
        "pong": True,
        "database": True,
    }
