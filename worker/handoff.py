"""Jobs that start other jobs: the run handle's `enqueue`, `claim` and `outcomes` (jobs/spec.py).

A parallel export (jobs/exports/parallel.py) enqueues its parts as jobs any worker may run,
claims a part before running it itself, and reads its parts' outcomes. Jobs are written as the
client writes them (worker/scripts.py, confirmed as ETL_REDIS_WAIT_REPLICAS asks), with the
running job's trace context, so the parts' spans join the export's trace.

Without Redis (a job called in-process by a test or a benchmark) nothing is enqueued and every
claim is granted: the export then writes every part itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from arq.utils import timestamp_ms

from jobs.spec import JobOutcome
from worker import tracing
from worker.errors import JobError
from worker.failover import WritePolicy, acknowledged_eval
from worker.keys import CLAIM_KEY_PREFIX, job_key_prefix, result_key_prefix
from worker.scripts import enqueue_call
from worker.serialization import deserialize, serialize
from worker.settings import Settings

CLAIM_SCRIPT = """
local held = redis.call('GET', KEYS[1])
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
if held == ARGV[1] then return 1 end
return 0
"""
"""KEYS[1] the claim, ARGV[1] the owner, ARGV[2] its time (s): 1 if the owner holds it now."""


async def enqueue(
    redis: Any, settings: Settings, function: str, *, job_id: str, kwargs: dict[str, Any]
) -> bool:
    """Write one job under `job_id` unless that id is taken; True if written."""
    if redis is None:
        return False
    trace = tracing.carrier()
    if trace is not None:
        kwargs = {**kwargs, tracing.TRACE_KWARG: trace}
    now = timestamp_ms()
    record = serialize({"t": 1, "f": function, "a": [], "k": kwargs, "et": now})
    script, keys, argv = enqueue_call(
        settings.queue_name, [(job_id, record)], now_ms=now, replace_failed=False
    )
    (flag,) = await acknowledged_eval(
        redis, script, keys, argv, policy=WritePolicy.from_settings(settings), job_ids=[job_id]
    )
    return bool(flag)


async def claim(redis: Any, settings: Settings, name: str, *, owner: str, ttl_s: int) -> bool:
    if redis is None:
        return True
    key = f"{CLAIM_KEY_PREFIX}{settings.queue_name}:{name}"
    held = await redis.eval(CLAIM_SCRIPT, 1, key, owner, ttl_s)
    return bool(held)


async def outcomes(
    redis: Any, settings: Settings, job_ids: Sequence[str]
) -> list[JobOutcome | None]:
    """Each job's outcome once finished (arq's result record: complete, failed or cancelled);
    None while it waits or runs. A job Redis no longer holds at all has failed."""
    if redis is None or not job_ids:
        return [None] * len(job_ids)
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.get(result_key_prefix + job_id)
            pipe.exists(job_key_prefix + job_id)
            pipe.zscore(settings.queue_name, job_id)
        replies = await pipe.execute()
    return [_outcome(*replies[i * 3 : i * 3 + 3]) for i in range(len(job_ids))]


def _outcome(result: bytes | None, job: int, score: float | None) -> JobOutcome | None:
    if result is None:
        if job or score is not None:
            return None  # queued, deferred for a retry, or running
        return JobOutcome(ok=False, error="its job is no longer in Redis")
    try:
        record = deserialize(result)
    except ValueError:
        return JobOutcome(ok=False, error="its result is not in this service's JSON format")
    if not isinstance(record, dict):
        return JobOutcome(ok=False, error="its result is not in this service's JSON format")
    value = record.get("r")
    if record.get("s") is True:
        return JobOutcome(ok=True, result=value)
    if isinstance(value, JobError):
        return JobOutcome(ok=False, error=value.message or value.kind)
    return JobOutcome(ok=False, error=str(value))
