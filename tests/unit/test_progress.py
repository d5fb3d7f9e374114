"""Progress and heartbeat against an in-memory Redis (fakeredis): plain SET / PEXPIRE behaviour."""

from __future__ import annotations

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


async def test_heartbeat_shortens_arqs_in_progress_key_and_never_creates_it() -> None:
    redis = fakeredis.FakeAsyncRedis()
    key = in_progress_key_prefix + "job-2"
    await redis.psetex(key, 3_610_000, b"1")  # what arq sets: longest timeout + 10 s
    ctx: dict[str, Any] = {"redis": redis}
    async with _heartbeat(ctx, "job-2", 7):
        assert 0 < await redis.pttl(key) <= 7000
        await redis.delete(key)  # arq finished the job meanwhile
    async with _heartbeat(ctx, "job-2", 7):
        assert await redis.exists(key) == 0
    await redis.aclose()
