"""Redis connection settings for arq, from REDIS_URL, with the password kept out of repr()."""

from __future__ import annotations

from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool

from worker.serialization import deserialize, serialize
from worker.settings import Settings, redact_url


class SafeRedisSettings(RedisSettings):
    def __repr__(self) -> str:
        shown = {k: ("***" if k == "password" and v else v) for k, v in self.__dict__.items()}
        return "RedisSettings({})".format(", ".join(f"{k}={v!r}" for k, v in shown.items()))


def redis_settings(settings: Settings) -> RedisSettings:
    if settings.redis_url is None:
        raise RuntimeError("no Redis URL: call worker.embedded.resolve() first")
    base = RedisSettings.from_dsn(settings.redis_url)
    fields: dict[str, Any] = dict(base.__dict__)
    fields["conn_retries"] = 3
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
