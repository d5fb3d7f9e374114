"""Redis connection settings for arq, from REDIS_URL, with the password kept out of repr()."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import expires_extra_ms
from arq.jobs import Deserializer
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError
from redis.backoff import EqualJitterBackoff
from redis.exceptions import AuthenticationError, AuthorizationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.sentinel import master_pool
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
    sentinel = settings.redis_sentinel()
    if sentinel is not None:
        # What arq's own create_pool would use (`arq --check`); the worker and the client
        # connect through sentinel_pool() instead, which can carry the retry.
        base = RedisSettings(
            host=list(sentinel.sentinels),
            sentinel=True,
            sentinel_master=sentinel.service,
            database=sentinel.db,
            username=sentinel.username,
            password=sentinel.password,
        )
    else:
        base = RedisSettings.from_dsn(settings.redis_url)
    fields: dict[str, Any] = dict(base.__dict__)
    fields["conn_retries"] = 3
    if ride_out_restarts:
        # The retry below covers start-up too; arq's own start-up retries would multiply it.
        fields["conn_retries"] = 0
        fields["retry"] = _restart_retry()
        fields["retry_on_error"] = [RedisConnectionError, RedisTimeoutError, OSError]
    return SafeRedisSettings(**fields)


def sentinel_pool(
    settings: Settings,
    *,
    ride_out_restarts: bool = False,
    job_deserializer: Deserializer | None = deserialize,
) -> ArqRedis:
    """An ArqRedis on the primary REDIS_URL's Sentinels name (a redis+sentinel:// URL).

    What arq's create_pool would set up, plus what it cannot pass to a Sentinel pool: the worker's
    retry (`ride_out_restarts`, as in redis_settings()), under which a connection lost to the old
    primary is retried, each new connection asking the Sentinels again, until the promoted
    replica answers. OSError is not listed here: the connect under the Sentinel's lookup would
    spend the whole allowance on the dead primary's address instead of asking again (refused
    connects still arrive, wrapped as ConnectionError). No I/O happens here.
    """
    url = settings.redis_sentinel()
    if url is None:
        raise RuntimeError("REDIS_URL is not a redis+sentinel:// URL")
    retry: Retry | None = None
    retry_on_error: list[type[Exception]] | None = None
    if ride_out_restarts:
        retry = _restart_retry()
        retry_on_error = [MasterNotFoundError, RedisConnectionError, RedisTimeoutError]
    pool = master_pool(
        url,
        retry=retry,
        retry_on_error=retry_on_error,
        # Longer than any WAIT the client sends.
        command_timeout_s=5.0 + settings.redis_wait_ms / 1000,
    )
    pool.job_serializer = serialize
    pool.job_deserializer = job_deserializer
    pool.default_queue_name = settings.queue_name
    pool.expires_extra_ms = expires_extra_ms
    return pool


async def _opened_sentinel_pool(settings: Settings) -> ArqRedis:
    """sentinel_pool(), pinged, with the tries arq's create_pool gives a plain URL."""
    pool = sentinel_pool(settings)
    try:
        for _ in range(redis_settings(settings).conn_retries):
            try:
                await pool.ping()
                return pool
            except (AuthenticationError, AuthorizationError):
                raise
            except (RedisError, OSError):
                await asyncio.sleep(1)
        await pool.ping()
        return pool
    except BaseException:
        await pool.aclose()
        raise


async def connect(settings: Settings) -> ArqRedis:
    """An arq Redis pool that speaks the service's JSON job format."""
    try:
        if settings.redis_sentinel() is not None:
            return await _opened_sentinel_pool(settings)
        return await create_pool(
            redis_settings(settings), job_serializer=serialize, job_deserializer=deserialize
        )
    except Exception as exc:
        raise ConnectionError(
            f"cannot reach Redis at {redact_url(settings.redis_url or '')}: {type(exc).__name__}"
        ) from None
