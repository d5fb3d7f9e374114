"""The client's side of a Redis failover: enqueues retried through it, and confirmed by replicas.

Redis replicates asynchronously: a primary answers a write before any replica has it, so a job
acknowledged by the primary alone is lost if the primary dies and a replica that lacks it is
promoted. With `wait_replicas` set, every enqueue is followed, on the same connection, by
`WAIT wait_replicas wait_ms`; fewer confirmations than asked count as not acknowledged, and the
enqueue is sent again. That is safe because the enqueue script writes a job only when its id is
not already queued or finished: a second send of the same jobs writes nothing twice.

Connection errors, a primary turned read-only, "no primary" while the Sentinels elect one, and
missing confirmations are retried with backoff for a bounded time, then reported as
NotAcknowledged (carrying the job ids to enqueue again). With neither Sentinel nor WAIT, nothing
is retried: an enqueue fails at once, as before.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from arq.connections import ArqRedis
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ReadOnlyError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs.errors import describe
from worker.errors import NotAcknowledged
from worker.settings import Settings

log = structlog.get_logger("worker.failover")

RETRY_FOR_S = 20.0
"""How long an enqueue is retried: a Sentinel failover takes a few seconds, a re-election more."""
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 2.0

FENCE_KEY = "etl:replication-fence"
"""A key written after each enqueue, so that WAIT always has a write of this send to wait for."""
FENCE_TTL_MS = 60_000


class NotReplicated(Exception):
    """WAIT returned fewer replica confirmations than asked."""

    def __init__(self, acked: int, wanted: int) -> None:
        super().__init__(f"WAIT: {acked} of {wanted} replica(s) confirmed")
        self.acked = acked
        self.wanted = wanted


RETRIED: tuple[type[BaseException], ...] = (
    # MasterNotFoundError (no primary during an election), and redis-py's Sentinel connection's
    # "The previous master is now a slave", are ConnectionErrors.
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    OSError,
    NotReplicated,
)
NEVER_RETRIED: tuple[type[BaseException], ...] = (AuthenticationError, AuthorizationError)
"""Filed under ConnectionError by redis-py, but a refused password will not become right."""


@dataclass(frozen=True, slots=True)
class WritePolicy:
    """How an enqueue is confirmed and retried."""

    wait_replicas: int = 0
    """Replica confirmations each enqueue needs (WAIT); 0: none asked."""
    wait_ms: int = 500
    retry_for_s: float = 0.0
    """0: no retry, errors reach the caller at once."""

    @classmethod
    def from_settings(cls, settings: Settings) -> WritePolicy:
        wait_replicas = settings.wait_replicas
        failover_ready = wait_replicas > 0 or settings.redis_sentinel() is not None
        return cls(
            wait_replicas=wait_replicas,
            wait_ms=settings.redis_wait_ms,
            retry_for_s=RETRY_FOR_S if failover_ready else 0.0,
        )


def backoff_s(attempt: int, *, rand: Callable[[], float] = random.random) -> float:
    """Delay before try `attempt + 1`: 0.1 s doubling to 2 s, the upper half jittered."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** min(attempt - 1, 16))
    return ceiling / 2 + rand() * ceiling / 2


async def _send(
    redis: ArqRedis, script: str, keys: Sequence[Any], argv: Sequence[Any], policy: WritePolicy
) -> Any:
    if policy.wait_replicas == 0:
        return await redis.eval(script, len(keys), *keys, *argv)  # type: ignore[misc]
    # One pipeline is one connection: WAIT counts the replicas that have this connection's writes.
    # The fence comes after the script, so WAIT covers the jobs even when the script writes
    # nothing (an earlier send, whose confirmations were missing, wrote them): replicas apply
    # writes in order.
    async with redis.pipeline(transaction=False) as pipe:
        pipe.eval(script, len(keys), *keys, *argv)
        pipe.set(FENCE_KEY, b"1", px=FENCE_TTL_MS)
        pipe.wait(policy.wait_replicas, policy.wait_ms)
        flags, _, acked = await pipe.execute()
    if int(acked) < policy.wait_replicas:
        raise NotReplicated(int(acked), policy.wait_replicas)
    return flags


async def acknowledged_eval(
    redis: ArqRedis,
    script: str,
    keys: Sequence[Any],
    argv: Sequence[Any],
    *,
    policy: WritePolicy,
    job_ids: Sequence[str],
) -> Any:
    """Run an idempotent enqueue script until Redis (and `policy`'s replicas) acknowledge it."""
    if policy.retry_for_s <= 0:
        return await _send(redis, script, keys, argv, policy)
    deadline = time.monotonic() + policy.retry_for_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return await _send(redis, script, keys, argv, policy)
        except NEVER_RETRIED:
            raise
        except RETRIED as exc:
            delay = backoff_s(attempt)
            why = str(exc) if isinstance(exc, NotReplicated) else describe(exc)
            if time.monotonic() + delay > deadline:
                raise NotAcknowledged(
                    f"enqueue of {len(job_ids)} job(s) not acknowledged within "
                    f"{policy.retry_for_s:g} s ({why}): they may or may not be queued; "
                    "enqueue them again with the same job ids, which never queues a job twice",
                    job_ids=list(job_ids),
                ) from exc
            log.warning(
                "enqueue.retrying",
                jobs=len(job_ids),
                attempt=attempt,
                error=why,
                retry_in_s=round(delay, 3),
            )
            await asyncio.sleep(delay)
