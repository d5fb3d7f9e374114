"""Putting many jobs on an arq queue at once: one Redis pipeline instead of a round trip per job.

It writes what arq's `enqueue_job` writes (the job key with its expiry, and the queue entry) but
skips `enqueue_job`'s per-job WATCH / EXISTS check: the ids are fresh uuids, so they cannot clash.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import uuid4

from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms

_PIPELINE_CHUNK = 5_000


async def enqueue_batch(
    pool: ArqRedis, *, function: str, kwargs: Iterable[dict[str, Any]], queue_name: str
) -> list[str]:
    """Enqueue one `function` job per kwargs dict; the job ids, in order."""
    ids: list[str] = []
    pending = 0
    pipe = pool.pipeline(transaction=False)
    for job_kwargs in kwargs:
        job_id = uuid4().hex
        now = timestamp_ms()
        data = serialize_job(function, (), job_kwargs, None, now, serializer=pool.job_serializer)
        pipe.psetex(job_key_prefix + job_id, pool.expires_extra_ms, data)
        pipe.zadd(queue_name, {job_id: now})
        ids.append(job_id)
        pending += 1
        if pending == _PIPELINE_CHUNK:
            await pipe.execute()
            pending = 0
    if pending:
        await pipe.execute()
    return ids


async def forget(pool: ArqRedis, *, queue_name: str, job_ids: list[str]) -> None:
    """Remove jobs that were enqueued but are not to be run (enqueue-only measurements)."""
    pipe = pool.pipeline(transaction=False)
    pipe.delete(queue_name)
    for start in range(0, len(job_ids), _PIPELINE_CHUNK):
        pipe.delete(
            *(job_key_prefix + job_id for job_id in job_ids[start : start + _PIPELINE_CHUNK])
        )
    await pipe.execute()
