"""Redis connection settings for arq, from REDIS_URL, with the password kept out of repr()."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.serialization import deserialize, serialize
from worker.settings import Settings, redact_url


class SafeRedisSettings(RedisSettings):
    def __repr__(self) -> str:
        shown = {k: ("***" if k == "password" and v else v) for k, v in self.__dict__.items()}
        return "RedisSettings({})".format(", ".join(f"{k}={v!r}" for k, v in shown.items()))


T = TypeVar("T")


class _RestartRetry(Retry):
    """redis-py's Retry, except that a refused password fails at once.

    redis-py files AuthenticationError under ConnectionError, so its Retry would spend the whole
    outage allowance on a password that will not become right. (The loop is redis-py 5's own.)
    """

    async def call_with_retry(
        self, do: Callable[[], Awaitable[T]], fail: Callable[[RedisError], Any]
    ) -> T:
        self._backoff.reset()  # type: ignore[no-untyped-call]
        failures = 0
        while True:
            try:
                return await do()
            except (AuthenticationError, AuthorizationError):
                raise
            except self._supported_errors as error:
                failures += 1
                await fail(error)
                if self._retries >= 0 and failures > self._retries:
                    raise error
                backoff = self._backoff.compute(failures)
                if backoff > 0:
                    await asyncio.sleep(backoff)


def _restart_retry() -> Retry:
    """Reconnect with backoff for 15-20 s: 10 more tries, 0.4 s doubling to 3 s, half jittered."""
    return _RestartRetry(EqualJitterBackoff(cap=3.0, base=0.2), 10)


def redis_settings(settings: Settings, *, ride_out_restarts: bool = False) -> RedisSettings:
    """arq's connection settings for REDIS_URL.

    `ride_out_restarts` is for the worker: without it, arq's polling loop ends (and the worker with
    it) at the first command Redis does not answer. With it, redis-py reconnects and repeats the
    command for 15-20 s, enough for a restart or a failover; a longer outage still ends the
    worker, for its supervisor to restart. Clients (the CLI, apps) keep failing fast instead.
    OSError is listed because a refused or missing socket surfaces as one while connecting, before
    redis-py wraps it, and only listed errors are retried there.
    """
    if settings.redis_url is None:
        raise RuntimeError("no Redis URL: call worker.embedded.resolve() first")
    base = RedisSettings.from_dsn(settings.redis_url)
    fields: dict[str, Any] = dict(base.__dict__)
    fields["conn_retries"] = 3
    if ride_out_restarts:
        # The retry below covers start-up too; arq's own start-up retries would multiply it.
        fields["conn_retries"] = 0
        fields["retry"] = _restart_retry()
        fields["retry_on_error"] = [RedisConnectionError, RedisTimeoutError, OSError]
    return SafeRedisSettings(**fields)


async def connect(settings: Settings) -> ArqRedis:
    """An arq Redis pool that speaks the service's JSON job format."""
    try:
        return await create_pool(
            redis_settings(settings), job_serializer=serialize, job_deserializer=deserialize
        )
    except Exception as exc:
        raise ConnectionError(
            f"cannot reach Redis at {redact_url(settings.redis_url or '')}: {type(exc).__name__}"
        ) from None
