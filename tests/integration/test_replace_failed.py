"""`replace_failed=True`: a fixed job id whose job failed can be enqueued again, and only then."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, result_key_prefix
from arq.worker import func

from jobs.errors import IdempotencyConflict, PermanentError
from jobs.ping import PingPayload, PingResult, ping
from tests.support.etl_process import drop_queue
from tests.support.worker_helpers import run_burst
from worker.client import EtlClient
from worker.keys import RETRIED_KEY_PREFIX
from worker.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"keep_result_s": 600})


@pytest.fixture(autouse=True)
async def _queue_dropped_after(settings: Settings, redis: ArqRedis) -> AsyncIterator[None]:
    yield
    await drop_queue(redis, settings.queue_name)


@pytest.fixture
async def client(settings: Settings, redis: ArqRedis) -> AsyncIterator[EtlClient]:
    async with EtlClient.from_redis(redis, settings) as etl:
        yield etl


@pytest.fixture
def job_id() -> str:
    # Job ids are global to the Redis database: one of its own per test.
    return f"daily-ping-{uuid.uuid4().hex[:8]}"


async def _database_away(ctx: dict[str, Any], **kwargs: Any) -> None:
    raise PermanentError("the database was away")


async def _fail(settings: Settings, redis: ArqRedis) -> None:
    worker = await run_burst(settings, redis, functions=[func(_database_away, name="ping")])
    assert worker.jobs_failed == 1


async def test_a_failed_job_is_replaced_and_runs_again(
    settings: Settings, redis: ArqRedis, client: EtlClient, job_id: str, clean_db: None
) -> None:
    first = await client.ping(PingPayload(), _job_id=job_id)
    await _fail(settings, redis)
    assert (await client.status(job_id)).state == "failed"
    await redis.set(RETRIED_KEY_PREFIX + job_id, b"some-other-id", ex=60)

    # Without the flag the failure holds the id for ETL_KEEP_RESULT.
    held = await client.ping(PingPayload(), _job_id=job_id)
    assert (held.created, held.replaced, (await held.status()).state) == (False, False, "failed")

    again = await client.ping(PingPayload(), _job_id=job_id, replace_failed=True)
    assert (first.created, again.created, again.replaced) == (True, True, True)
    state = await client.status(job_id)
    assert (state.state, state.error, state.retried_as) == ("queued", None, None)
    assert not await redis.exists(result_key_prefix + job_id, RETRIED_KEY_PREFIX + job_id)
    assert await redis.zcard(settings.queue_name) == 1

    await run_burst(settings, redis)
    assert await again.result(timeout=5) == PingResult(pong=True, database=True)


async def test_a_failed_job_may_be_replaced_by_other_arguments(
    settings: Settings, redis: ArqRedis, client: EtlClient, job_id: str
) -> None:
    await client.enqueue(ping, {"touch_db": True}, _job_id=job_id)
    await _fail(settings, redis)
    with pytest.raises(IdempotencyConflict):
        await client.enqueue(ping, {"touch_db": False}, _job_id=job_id)
    replaced = await client.enqueue(ping, {"touch_db": False}, _job_id=job_id, replace_failed=True)
    assert replaced.replaced
    assert (await client.status(job_id)).kwargs == {"touch_db": False}


async def test_a_queued_running_complete_or_cancelled_job_is_never_replaced(
    settings: Settings, redis: ArqRedis, client: EtlClient, job_id: str, clean_db: None
) -> None:
    queued = await client.ping(PingPayload(touch_db=False), _job_id=job_id)
    again = await client.ping(PingPayload(touch_db=False), _job_id=job_id, replace_failed=True)
    assert (queued.created, again.created, again.replaced) == (True, False, False)
    # Other arguments: the same conflict as without the flag.
    with pytest.raises(IdempotencyConflict):
        await client.ping(PingPayload(touch_db=True), _job_id=job_id, replace_failed=True)

    await redis.set(in_progress_key_prefix + job_id, b"1", px=60_000)  # as a worker marks it
    running = await client.ping(PingPayload(touch_db=False), _job_id=job_id, replace_failed=True)
    assert (running.created, (await running.status()).state) == (False, "in_progress")
    await redis.delete(in_progress_key_prefix + job_id)

    await run_burst(settings, redis)
    complete = await client.ping(PingPayload(touch_db=False), _job_id=job_id, replace_failed=True)
    assert (complete.created, (await complete.status()).state) == (False, "complete")
    assert await redis.zcard(settings.queue_name) == 0

    cancelled_id = job_id + "-c"
    await client.ping(_job_id=cancelled_id)
    await client.cancel(cancelled_id, wait=1)
    cancelled = await client.ping(_job_id=cancelled_id, replace_failed=True)
    assert (cancelled.created, (await cancelled.status()).state) == (False, "cancelled")
    assert await redis.zcard(settings.queue_name) == 0


async def test_without_a_job_id_the_flag_changes_nothing(client: EtlClient) -> None:
    handle = await client.ping(replace_failed=True)
    assert (handle.created, handle.replaced) == (True, False)
