"""Progress and heartbeat against an in-memory Redis (fakeredis): plain SET / PEXPIRE behaviour."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import fakeredis
from arq.constants import in_progress_key_prefix

from worker.runner import PROGRESS_KEY_PREFIX, RunHandle, _heartbeat


async def test_progress_is_published_as_json_with_a_ttl_and_throttled() -> None:
    redis = fakeredis.FakeAsyncRedis()
    run = RunHandle(app=None, job_id="job-1", job_try=1, redis=redis)  # type: ignore[arg-type]
    await run.progress(rows=10)
    await run.progress(rows=20)  # within the throttle window: kept, not yet published
    raw = await redis.get(PROGRESS_KEY_PREFIX + "job-1")
    assert json.loads(raw) == {"rows": 10}
    assert 3500 < await redis.ttl(PROGRESS_KEY_PREFIX + "job-1") <= 3600
    assert run.counters == {"rows": 20}
    await redis.aclose()


async def _until_shortened(redis: Any, key: str, ttl_ms: int) -> None:
    """The beats go out in the background, as soon as the job waits for anything."""
    for _ in range(200):
        if 0 < await redis.pttl(key) <= ttl_ms:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{key} was not shortened to {ttl_ms} ms")


async def test_heartbeat_shortens_arqs_in_progress_key_and_never_creates_it() -> None:
    redis = fakeredis.FakeAsyncRedis()
    key = in_progress_key_prefix + "job-2"
    await redis.psetex(key, 3_610_000, b"1")  # what arq sets: longest timeout + 10 s
    ctx: dict[str, Any] = {"redis": redis}
    with _heartbeat(ctx, "job-2", 7):
        await _until_shortened(redis, key, 7000)
        await redis.delete(key)  # arq finished the job meanwhile
    with _heartbeat(ctx, "job-2", 7):
        await asyncio.sleep(0.1)  # long enough for a beat to Redis in memory
        assert await redis.exists(key) == 0
    await redis.aclose()


async def test_a_job_that_never_waits_sends_no_beat() -> None:
    redis = fakeredis.FakeAsyncRedis()
    key = in_progress_key_prefix + "job-5"
    await redis.psetex(key, 3_610_000, b"1")
    with _heartbeat({"redis": redis}, "job-5", 7):
        pass  # a no-op job: it holds the event loop from start to end
    await asyncio.sleep(0.1)
    assert await redis.pttl(key) > 3_600_000
    await redis.aclose()
