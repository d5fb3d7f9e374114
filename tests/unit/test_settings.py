"""Settings from the environment: URL normalisation, and passwords kept out of reprs and errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from worker.redis import redis_settings
from worker.settings import Settings

SECRET = "s3cr3t-Pa55"
ENV_NAMES = (
    "DATABASE_URL",
    "REDIS_URL",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "ETL_MAX_TRIES",
    "ETL_RETRY_BASE",
    "ETL_RETRY_CAP",
    "ETL_REQUEUE_AFTER",
    "ETL_SHUTDOWN_GRACE",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Only what a test sets: nothing from the machine's environment or a `.env` file."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    yield


def load(**env: Any) -> Settings:
    return Settings(_env_file=None, **env)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://etl@db.example/etl", "postgresql+asyncpg://etl@db.example/etl"),
        ("postgresql://etl@db.example:5433/etl", "postgresql+asyncpg://etl@db.example:5433/etl"),
        ("postgresql+asyncpg://etl@db.example/etl", "postgresql+asyncpg://etl@db.example/etl"),
        (
            "  postgresql://etl@/etl?host=/run/postgresql  ",
            "postgresql+asyncpg://etl@/etl?host=%2Frun%2Fpostgresql",
        ),
    ],
)
def test_database_urls_are_normalised_for_asyncpg(given: str, expected: str) -> None:
    assert load(DATABASE_URL=given).database_url == expected


def test_database_url_keeps_the_password_it_needs_to_connect() -> None:
    settings = load(DATABASE_URL=f"postgres://etl:{SECRET}@db.example/etl")
    assert settings.database_url == f"postgresql+asyncpg://etl:{SECRET}@db.example/etl"
    assert settings.sqlalchemy_url().password == SECRET
    assert settings.database_url_safe() == "postgresql+asyncpg://etl:***@db.example/etl"


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://etl@db.example/etl")
    monkeypatch.setenv("ETL_SHUTDOWN_GRACE", "12.5")
    monkeypatch.setenv("ETL_REQUEUE_AFTER", "5")
    settings = load()
    assert settings.database_url == "postgresql+asyncpg://etl@db.example/etl"
    assert settings.shutdown_grace_s == 12.5
    assert settings.requeue_after_s == 5


def test_no_password_in_repr_or_str() -> None:
    settings = load(
        DATABASE_URL=f"postgresql://etl:{SECRET}@db.example/etl",
        REDIS_URL=f"redis://:{SECRET}@cache.example:6379/0",
    )
    for text in (repr(settings), str(settings)):
        assert SECRET not in text
        assert "database_url" not in text and "redis_url" not in text
    assert settings.redis_url_safe() == "redis://:***@cache.example:6379/0"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            f"mysql://etl:{SECRET}@db.example/etl",
            "DATABASE_URL scheme 'mysql' is not supported (use postgresql://)",
        ),
        (
            f"postgresql://etl:{SECRET}@db.example",
            "DATABASE_URL names no database (expected postgresql://user@host/db)",
        ),
        (f"etl:{SECRET} at db", "DATABASE_URL is not a URL (expected postgresql://user@host/db)"),
        # Without `@host` the password is parsed as the port; the parser's message would quote it.
        (
            f"postgresql://etl:{SECRET}/etl",
            "DATABASE_URL has a port that is not a number "
            "(expected postgresql://user:password@host:5432/db)",
        ),
    ],
)
def test_bad_database_url_fails_in_one_line_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        load(DATABASE_URL=url)
    text = str(raised.value)
    assert SECRET not in text
    [error] = raised.value.errors()
    assert error["loc"] == ("DATABASE_URL",)
    assert error["msg"] == f"Value error, {message}"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            f"http://:{SECRET}@cache.example",
            "REDIS_URL must start with redis://, rediss://, unix:// or redis+sentinel://",
        ),
        (
            f"redis://:{SECRET}",
            "REDIS_URL has a port or database number that is not a number "
            "(expected redis://:password@host:6379/0)",
        ),
        (
            f"redis://:{SECRET}@cache.example/zero",
            "REDIS_URL has a port or database number that is not a number "
            "(expected redis://:password@host:6379/0)",
        ),
    ],
)
def test_bad_redis_url_fails_in_one_line_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ValidationError) as raised:
        load(REDIS_URL=url)
    assert SECRET not in str(raised.value)
    [error] = raised.value.errors()
    assert error["loc"] == ("REDIS_URL",)
    assert error["msg"] == f"Value error, {message}"


def test_log_format_defaults_to_json_off_a_terminal_and_can_be_forced() -> None:
    settings = load()
    assert settings.log_format is None
    # pytest captures stdout, so this is the "not a TTY" case a container or systemd gives.
    assert settings.resolved_log_format == "json"
    assert load(LOG_FORMAT="console").resolved_log_format == "console"
    with pytest.raises(ValidationError, match="LOG_FORMAT"):
        load(LOG_FORMAT="xml")


def test_retry_settings_have_their_defaults_and_bounds() -> None:
    settings = load()
    assert (settings.max_tries, settings.retry_base_s, settings.retry_cap_s) == (5, 1.0, 60.0)
    assert settings.requeue_after_s == 60
    assert settings.shutdown_grace_s == 30.0
    with pytest.raises(ValidationError, match="ETL_REQUEUE_AFTER"):
        load(ETL_REQUEUE_AFTER=2)
    with pytest.raises(ValidationError, match="ETL_MAX_TRIES"):
        load(ETL_MAX_TRIES=0)


def test_rediss_url_means_tls_and_keeps_its_password_out_of_repr() -> None:
    settings = load(REDIS_URL=f"rediss://worker:{SECRET}@cache.example:6380/2")
    redis = redis_settings(settings)
    assert redis.ssl is True
    assert (redis.host, redis.port, redis.database) == ("cache.example", 6380, 2)
    assert (redis.username, redis.password) == ("worker", SECRET)
    assert SECRET not in repr(redis)
    assert "password='***'" in repr(redis)


def test_plain_redis_url_is_not_tls() -> None:
    redis = redis_settings(load(REDIS_URL="redis://cache.example/0"))
    assert redis.ssl is False
    assert redis.password is None
    assert "password=None" in repr(redis)


def test_unix_socket_url_with_password() -> None:
    redis = redis_settings(load(REDIS_URL=f"unix://:{SECRET}@/run/redis/redis.sock?db=3"))
    assert redis.unix_socket_path == "/run/redis/redis.sock"
    assert redis.password == SECRET
    assert redis.database == 3
    assert SECRET not in repr(redis)


def test_only_the_worker_rides_out_a_redis_restart() -> None:
    settings = load(REDIS_URL="redis://cache.example/0")
    client = redis_settings(settings)
    assert client.retry is None
    worker = redis_settings(settings, ride_out_restarts=True)
    assert worker.retry is not None
    assert worker.retry_on_error is not None and OSError in worker.retry_on_error


async def test_worker_retry_repeats_a_lost_connection_but_not_a_refused_password() -> None:
    retry = redis_settings(load(REDIS_URL="redis://cache.example/0"), ride_out_restarts=True).retry
    assert retry is not None
    calls: list[str] = []

    async def disconnect(error: Exception) -> None:
        calls.append("disconnect")

    async def refused() -> str:
        calls.append("auth")
        raise AuthenticationError("invalid username-password pair")

    with pytest.raises(AuthenticationError):
        await retry.call_with_retry(refused, disconnect)
    assert calls == ["auth"]

    calls.clear()

    async def lost_once() -> str:
        calls.append("command")
        if len(calls) == 1:
            raise RedisConnectionError("Connection closed by server.")
        return "PONG"

    assert await retry.call_with_retry(lost_once, disconnect) == "PONG"
    assert calls == ["command", "disconnect", "command"]
