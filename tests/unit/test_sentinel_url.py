"""REDIS_URL=redis+sentinel://…: parsing, one-line errors without the password, what gets built."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from redis.asyncio.sentinel import MasterNotFoundError, SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError

from jobs.errors import ConfigError
from worker.cli import _unrepeated
from worker.client import EtlClient
from worker.failover import WritePolicy, backoff_s
from worker.main import build_worker_settings
from worker.redis import redis_settings, sentinel_pool
from worker.sentinel import SentinelArqRedis, SentinelURL, parse_sentinel_url
from worker.serialization import deserialize_job, serialize
from worker.settings import Settings, redact_url

SECRET = "s3nt1nel-Pa55"
SHAPE = "redis+sentinel://host:26379[,host:port…]/mymaster[/db]"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("REDIS_URL", "ETL_REDIS_WAIT_REPLICAS", "ETL_REDIS_WAIT_MS", "ETL_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    yield


def load(**env: Any) -> Settings:
    return Settings(_env_file=None, **env)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://s1:26379,s2:26380,s3/mymaster",
            SentinelURL((("s1", 26379), ("s2", 26380), ("s3", 26379)), "mymaster"),
        ),
        (
            f"redis+sentinel://:{SECRET}@10.0.0.1:5000/etl.main/3",
            SentinelURL((("10.0.0.1", 5000),), "etl.main", db=3, password=SECRET),
        ),
        (
            "REDIS+SENTINEL://worker:p%40ss%2Fw0rd@[::1]:26379,[fe80::2]/svc-1/",
            SentinelURL(
                (("::1", 26379), ("fe80::2", 26379)),
                "svc-1",
                username="worker",
                password="p@ss/w0rd",
            ),
        ),
        # Unescaped '@' and '/' in the password: the last '@' ends it.
        (
            "redis+sentinel://:a/b@c@h:1/m",
            SentinelURL((("h", 1),), "m", password="a/b@c"),
        ),
    ],
)
def test_sentinel_urls_are_parsed(url: str, expected: SentinelURL) -> None:
    assert parse_sentinel_url(url) == expected
    assert load(REDIS_URL=url).redis_sentinel() == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            f"redis+sentinel://:{SECRET}@s1:26379,s2:26379",
            f"REDIS_URL: a redis+sentinel:// URL needs the service name: {SHAPE}",
        ),
        (
            f"redis+sentinel://:{SECRET}@s1:26379/",
            f"REDIS_URL: a redis+sentinel:// URL needs the service name: {SHAPE}",
        ),
        (
            f"redis+sentinel://:{SECRET}@/mymaster",
            f"REDIS_URL: a redis+sentinel:// URL needs at least one sentinel host: {SHAPE}",
        ),
        (
            f"redis+sentinel://:{SECRET}@s1:26379,s2:port/mymaster",
            f"REDIS_URL: the port of sentinel 2 is not a number from 1 to 65535 (expected {SHAPE})",
        ),
        (
            "redis+sentinel://s1:70000/mymaster",
            f"REDIS_URL: the port of sentinel 1 is not a number from 1 to 65535 (expected {SHAPE})",
        ),
        # A forgotten '@': the password lands where the port goes, and must not be echoed.
        (
            f"redis+sentinel://:{SECRET}s1:26379/mymaster",
            f"REDIS_URL: sentinel 1 has no host (expected {SHAPE})",
        ),
        (
            f"redis+sentinel://h:{SECRET}/mymaster",
            f"REDIS_URL: the port of sentinel 1 is not a number from 1 to 65535 (expected {SHAPE})",
        ),
        (
            f"redis+sentinel://:{SECRET}@s1,,s3/mymaster",
            f"REDIS_URL: sentinel 2 has no host (expected {SHAPE})",
        ),
        (
            f"redis+sentinel://:{SECRET}@[::1/mymaster",
            f"REDIS_URL: sentinel 1 is not host:port (expected {SHAPE})",
        ),
        (
            f"redis+sentinel://:{SECRET}@s1/mymaster/zero",
            "REDIS_URL: the database number after the service name is not a number "
            f"(expected {SHAPE})",
        ),
        (
            f"redis+sentinel://:{SECRET}@s1/mymaster/0/1",
            f"REDIS_URL: a redis+sentinel:// URL ends with /service_name[/db] (expected {SHAPE})",
        ),
        (
            f"redis+sentinel://:{SECRET}@s1/my master",
            "REDIS_URL: the Sentinel service name may hold only letters, digits, '.', '_' "
            f"and '-' (expected {SHAPE})",
        ),
        (
            f"redis+sentinel://:{SECRET}@s1/mymaster?db=1",
            f"REDIS_URL: a redis+sentinel:// URL takes no ?query or #fragment (expected {SHAPE})",
        ),
        (
            f"sentinel://:{SECRET}@s1/mymaster",
            "REDIS_URL must start with redis://, rediss://, unix:// or redis+sentinel://",
        ),
    ],
)
def test_bad_sentinel_url_fails_in_one_line_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        load(REDIS_URL=url)
    assert SECRET not in str(raised.value)
    [error] = raised.value.errors()
    assert error["loc"] == ("REDIS_URL",)
    assert error["msg"] == f"Value error, {message}"
    assert "\n" not in message
    # As `etl` prints it: `REDIS_URL: problem`, the name once.
    line = _unrepeated(f"REDIS_URL: {message}")
    assert line.startswith("REDIS_URL: ") and not line.startswith("REDIS_URL: REDIS_URL")
    # And from the client's own parameter.
    with pytest.raises(ConfigError) as caught:
        EtlClient(load(), redis_url=url)
    assert caught.value.message == message


def test_the_password_stays_out_of_repr_and_redacted_urls() -> None:
    url = f"redis+sentinel://etl:{SECRET}@s1:26379,s2:26379/mymaster/2"
    settings = load(REDIS_URL=url)
    parsed = settings.redis_sentinel()
    assert parsed is not None and parsed.password == SECRET
    assert SECRET not in repr(parsed)
    assert SECRET not in repr(settings)
    assert settings.redis_url_safe() == "redis+sentinel://etl:***@s1:26379,s2:26379/mymaster/2"
    assert redact_url(url) == settings.redis_url_safe()
    arq_settings = redis_settings(settings)
    assert arq_settings.sentinel is True
    assert arq_settings.host == [("s1", 26379), ("s2", 26379)]
    assert (arq_settings.sentinel_master, arq_settings.database) == ("mymaster", 2)
    assert SECRET not in repr(arq_settings)


def test_wait_replicas_defaults_to_one_with_sentinel_and_off_otherwise() -> None:
    sentinel = load(REDIS_URL="redis+sentinel://s1/mymaster")
    plain = load(REDIS_URL="redis://cache.example/0")
    assert (sentinel.wait_replicas, plain.wait_replicas) == (1, 0)
    assert load(REDIS_URL="redis+sentinel://s1/m", ETL_REDIS_WAIT_REPLICAS=0).wait_replicas == 0
    assert load(REDIS_URL="redis://c/0", ETL_REDIS_WAIT_REPLICAS=2).wait_replicas == 2
    with pytest.raises(ValidationError, match="ETL_REDIS_WAIT_MS"):
        load(ETL_REDIS_WAIT_MS=0)
    # Retried through a failover only where one can happen (or replicas are waited for).
    assert WritePolicy.from_settings(sentinel) == WritePolicy(1, 500, 20.0)
    assert WritePolicy.from_settings(plain) == WritePolicy(0, 500, 0.0)
    assert WritePolicy.from_settings(
        load(REDIS_URL="redis://c/0", ETL_REDIS_WAIT_REPLICAS=1, ETL_REDIS_WAIT_MS=250)
    ) == WritePolicy(1, 250, 20.0)


def test_backoff_doubles_from_a_tenth_of_a_second_to_two_seconds_half_jittered() -> None:
    assert [backoff_s(n, rand=lambda: 0.0) for n in (1, 2, 3, 5, 6, 30)] == [
        0.05,
        0.1,
        0.2,
        0.8,
        1.0,
        1.0,
    ]
    assert backoff_s(1, rand=lambda: 1.0) == 0.1
    assert backoff_s(30, rand=lambda: 1.0) == 2.0


async def test_the_worker_gets_a_sentinel_pool_with_the_ride_out_retry_and_no_io() -> None:
    url = f"redis+sentinel://:{SECRET}@127.0.0.1:1,127.0.0.1:2/mymaster/4"
    settings = load(REDIS_URL=url, ETL_QUEUE="etl:q")
    worker = build_worker_settings(settings)
    pool = worker["redis_pool"]
    try:
        # Nothing listens on ports 1 and 2: building it did not connect anywhere.
        assert isinstance(pool, SentinelArqRedis)
        assert (pool.job_serializer, pool.job_deserializer) == (serialize, deserialize_job)
        assert pool.default_queue_name == "etl:q"
        connections = pool.connection_pool
        assert isinstance(connections, SentinelConnectionPool)
        assert connections.service_name == "mymaster"
        kwargs = connections.connection_kwargs
        assert (kwargs["password"], kwargs["db"]) == (SECRET, 4)
        assert MasterNotFoundError in kwargs["retry_on_error"]
        assert RedisConnectionError in kwargs["retry_on_error"]
        assert kwargs["retry"] is not None
        # The Sentinels are asked without the primary's password.
        for sentinel in connections.sentinel_manager.sentinels:
            assert sentinel.connection_pool.connection_kwargs.get("password") is None
    finally:
        await pool.aclose()
    # A plain URL is still arq's to connect.
    assert "redis_pool" not in build_worker_settings(load(REDIS_URL="redis://cache/0"))


async def test_the_clients_sentinel_pool_leaves_retrying_to_the_enqueue() -> None:
    pool = sentinel_pool(load(REDIS_URL="redis+sentinel://127.0.0.1:1/mymaster"))
    try:
        kwargs = pool.connection_pool.connection_kwargs
        assert kwargs.get("retry") is None and kwargs.get("retry_on_error") is None
        assert kwargs["socket_timeout"] > 0.5  # longer than the client's WAIT
    finally:
        await pool.aclose()
