"""The service's configuration, read from the environment (and an optional `.env`)."""

from __future__ import annotations

import socket
import sys
from datetime import time
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from jobs.storage import S3Options, S3Url, is_s3_url, parse_s3_url
from worker.sentinel import SentinelURL, is_sentinel_url, parse_sentinel_url

_PG_SCHEMES = {"postgresql", "postgres", "postgresql+asyncpg"}
_REDIS_SCHEMES = {"redis", "rediss", "unix"}


def normalise_database_url(value: str) -> str:
    """Accept `postgres://` and `postgresql://` and return a `postgresql+asyncpg://` URL."""
    try:
        url = make_url(value.strip())
    except ArgumentError:
        raise ValueError("DATABASE_URL is not a URL (expected postgresql://user@host/db)") from None
    except ValueError:
        # A non-numeric port. Without `@host` the password is what lands there, so the parser's
        # own message ("invalid literal for int(): '<password>'") must not be shown.
        raise ValueError(
            "DATABASE_URL has a port that is not a number "
            "(expected postgresql://user:password@host:5432/db)"
        ) from None
    if url.drivername not in _PG_SCHEMES:
        raise ValueError(
            f"DATABASE_URL scheme {url.drivername!r} is not supported (use postgresql://)"
        )
    if not url.database:
        raise ValueError("DATABASE_URL names no database (expected postgresql://user@host/db)")
    return url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def redact_url(value: str) -> str:
    """The URL with its password replaced by `***`, safe for logs and messages."""
    if "://" not in value:
        return value
    scheme, rest = value.split("://", 1)
    userinfo, sep, hostpart = rest.rpartition("@")
    if not sep or ":" not in userinfo:
        return value
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hostpart}"


def check_redis_url(value: str) -> str:
    """`value` if it is a Redis URL arq can use; ValueError in one line (no password) otherwise."""
    if is_sentinel_url(value):
        parse_sentinel_url(value)
        return value
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme not in _REDIS_SCHEMES:
        raise ValueError(
            "REDIS_URL must start with redis://, rediss://, unix:// or redis+sentinel://"
        )
    check_redis_numbers(value)
    return value


def check_redis_numbers(value: str) -> None:
    """Fail here, in one clear line, on what arq's URL parser would fail on later.

    Its messages quote the text it could not read; without `@host`, that text is the password.
    """
    parts = urlsplit(value)
    db = parse_qs(parts.query).get("db", [""])[0]
    if not db and parts.scheme != "unix":
        db = parts.path.lstrip("/")
    try:
        parts.port  # noqa: B018 (parsing the port is the check)
        if db:
            int(db)
    except ValueError:
        raise ValueError(
            "REDIS_URL has a port or database number that is not a number "
            "(expected redis://:password@host:6379/0)"
        ) from None


class Settings(BaseSettings):
    """Everything the worker, the CLI and the client read from the environment."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    database_url: str | None = Field(default=None, alias="DATABASE_URL", repr=False)
    """PostgreSQL URL; unset means an embedded PostgreSQL under the state dir."""
    redis_url: str | None = Field(default=None, alias="REDIS_URL", repr=False)
    """Redis URL (redis://, rediss://, unix:// or redis+sentinel://); unset: an embedded Redis."""
    redis_wait_replicas: int | None = Field(default=None, ge=0, alias="ETL_REDIS_WAIT_REPLICAS")
    """Replicas that must confirm an enqueue (Redis WAIT); unset: 1 with Sentinel, else 0 (off)."""
    redis_wait_ms: int = Field(default=500, ge=1, le=10_000, alias="ETL_REDIS_WAIT_MS")
    """How long one enqueue waits for those confirmations before it is tried again."""

    import_dir: Path | S3Url = Field(default=Path("data/inbox"), alias="ETL_IMPORT_DIR")
    """Import files are read only from inside this directory, or this `s3://bucket/prefix`."""
    export_dir: Path | S3Url = Field(default=Path("data/exports"), alias="ETL_EXPORT_DIR")
    """Export files are written only inside this directory, or this `s3://bucket/prefix`."""
    s3_endpoint_url: str | None = Field(default=None, alias="ETL_S3_ENDPOINT_URL")
    """Endpoint of an S3-compatible store (MinIO, R2, Ceph...) for s3:// dirs; unset: AWS."""
    aws_access_key_id: str | None = Field(default=None, alias="AWS_ACCESS_KEY_ID", repr=False)
    aws_secret_access_key: SecretStr | None = Field(
        default=None, alias="AWS_SECRET_ACCESS_KEY", repr=False
    )
    aws_session_token: SecretStr | None = Field(default=None, alias="AWS_SESSION_TOKEN", repr=False)
    aws_region: str | None = Field(default=None, alias="AWS_REGION")
    """Region of the bucket; unset: obstore's default (AWS_DEFAULT_REGION, else us-east-1)."""
    state_dir: Path = Field(default=Path(".etl"), alias="ETL_STATE_DIR")
    """Where the embedded servers keep their data."""

    pool_size: int = Field(default=5, ge=1, alias="DB_POOL_SIZE")
    max_overflow: int = Field(default=5, ge=0, alias="DB_MAX_OVERFLOW")
    pool_recycle: int = Field(default=1800, alias="DB_POOL_RECYCLE")
    """Seconds after which a pooled connection is replaced."""
    pool_pre_ping: bool = Field(default=True, alias="DB_POOL_PRE_PING")
    pool: Literal["queue", "null"] = Field(default="queue", alias="DB_POOL")
    """`queue`: connections kept per process; `null`: one per unit of work (for pgbouncer)."""
    statement_cache: bool = Field(default=True, alias="DB_STATEMENT_CACHE")
    """`off` for pgbouncer in transaction mode: no prepared statement outlives its transaction."""
    migration_lock_timeout_s: float = Field(default=5.0, gt=0, alias="ETL_MIGRATION_LOCK_TIMEOUT")
    """Seconds a migration waits for a lock (or for older transactions) before it gives up."""
    migration_statement_timeout_s: float = Field(
        default=60.0, gt=0, alias="ETL_MIGRATION_STATEMENT_TIMEOUT"
    )
    """Seconds one migration statement (an index build included) may run before it is cancelled."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", alias="LOG_LEVEL"
    )
    log_format: Literal["json", "console"] | None = Field(default=None, alias="LOG_FORMAT")
    """`json` or `console`; unset means console on a TTY, JSON otherwise."""

    queue_name: str = Field(default="etl:queue", alias="ETL_QUEUE")
    max_jobs: int = Field(default=8, ge=1, alias="ETL_MAX_JOBS")
    """How many jobs one worker process runs at once."""
    max_tries: int = Field(default=5, ge=1, alias="ETL_MAX_TRIES")
    """How many times a job runs before a transient failure becomes final."""
    retry_base_s: float = Field(default=1.0, gt=0, alias="ETL_RETRY_BASE")
    """First retry delay; each later try doubles it (with jitter), up to the cap."""
    retry_cap_s: float = Field(default=60.0, gt=0, alias="ETL_RETRY_CAP")
    requeue_after_s: int = Field(default=60, ge=5, alias="ETL_REQUEUE_AFTER")
    """How long after a worker dies its running jobs become runnable again."""
    shutdown_grace_s: float = Field(default=30.0, ge=0, alias="ETL_SHUTDOWN_GRACE")
    """On SIGTERM, how long running jobs may take to finish before they are cancelled."""
    keep_result_s: int = Field(default=7 * 24 * 3600, ge=0, alias="ETL_KEEP_RESULT")
    """How long job results (and failures) stay in Redis for `etl status` and `etl failed`."""

    nightly_at: time = Field(default=time(2, 0), alias="ETL_NIGHTLY_AT")
    """UTC time of day of the nightly export."""
    nightly_datasets: str = Field(
        default="customers,accounts,transfers", alias="ETL_NIGHTLY_DATASETS"
    )
    """Comma-separated datasets the nightly export writes."""
    export_keep: int = Field(default=7, ge=1, alias="ETL_EXPORT_KEEP")
    """Nightly files kept per dataset; older ones are deleted."""
    schedules_file: Path | None = Field(default=None, alias="ETL_SCHEDULES")
    """A TOML file of scheduled jobs (worker/schedules.py); unset: the nightly export only."""

    metrics_port: int | None = Field(default=None, ge=0, le=65535, alias="ETL_METRICS_PORT")
    """Serve Prometheus metrics on this port at /metrics (0: any free port); unset means off."""
    metrics_host: str = Field(default="127.0.0.1", min_length=1, alias="ETL_METRICS_HOST")
    """Address the metrics server binds to (0.0.0.0 for every interface)."""

    worker_name: str = Field(
        default_factory=socket.gethostname, min_length=1, alias="ETL_WORKER_NAME"
    )
    """How this worker process names its host in the worker registry (`etl check`, dashboard)."""
    dashboard_token: SecretStr | None = Field(default=None, alias="ETL_DASHBOARD_TOKEN", repr=False)
    """Token an operator gives to the dashboard to retry and cancel jobs; unset means read-only."""

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str | None) -> str | None:
        return None if not value else normalise_database_url(value)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        return check_redis_url(value) if value else None

    @field_validator("metrics_port", "schedules_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("import_dir", "export_dir", mode="before")
    @classmethod
    def _s3_url(cls, value: object) -> object:
        return parse_s3_url(value) if isinstance(value, str) and is_s3_url(value) else value

    @field_validator("import_dir", "export_dir", "state_dir")
    @classmethod
    def _absolute(cls, value: Path | S3Url) -> Path | S3Url:
        return value.expanduser().absolute() if isinstance(value, Path) else value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if not value or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            raise ValueError(
                "ETL_S3_ENDPOINT_URL must be http(s)://host[:port], with no credentials in it "
                "(they come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
            )
        return value.strip().rstrip("/")

    @property
    def resolved_log_format(self) -> Literal["json", "console"]:
        if self.log_format is not None:
            return self.log_format
        return "console" if sys.stdout.isatty() else "json"

    @property
    def nightly_dataset_names(self) -> list[str]:
        return [name.strip() for name in self.nightly_datasets.split(",") if name.strip()]

    def s3_options(self) -> S3Options:
        """The store's endpoint and credentials for s3:// directories."""
        secret, token = self.aws_secret_access_key, self.aws_session_token
        return S3Options(
            endpoint_url=self.s3_endpoint_url,
            region=self.aws_region or None,
            access_key_id=self.aws_access_key_id or None,
            secret_access_key=secret.get_secret_value() or None if secret else None,
            session_token=token.get_secret_value() or None if token else None,
        )

    def database_url_safe(self) -> str | None:
        return None if self.database_url is None else redact_url(self.database_url)

    def redis_sentinel(self) -> SentinelURL | None:
        """REDIS_URL's Sentinels and service when it is a redis+sentinel:// URL, else None."""
        if self.redis_url is None or not is_sentinel_url(self.redis_url):
            return None
        return parse_sentinel_url(self.redis_url)

    @property
    def wait_replicas(self) -> int:
        """ETL_REDIS_WAIT_REPLICAS, or its default for REDIS_URL."""
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if self.redis_sentinel() is not None else 0

    def redis_url_safe(self) -> str | None:
        return None if self.redis_url is None else redact_url(self.redis_url)

    def sqlalchemy_url(self) -> URL:
        if self.database_url is None:
            raise RuntimeError("no database URL: call worker.embedded.resolve() first")
        return make_url(self.database_url)


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
