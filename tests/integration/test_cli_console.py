"""The operators' console from the command line: file flags, --replace-failed, --json failures,
`etl db`. Separate `etl` processes against the real servers, as an operator runs them."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis
from arq.worker import func
from sqlalchemy.engine import make_url

from jobs.errors import PermanentError
from tests.support.database import asyncpg_dsn
from tests.support.etl_process import ETL, cli_env, drop_queue, etl
from tests.support.worker_helpers import run_burst
from worker.settings import Settings

pytestmark = pytest.mark.timeout(240)

JOB_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"keep_result_s": 600})


@pytest.fixture(autouse=True)
async def _queue_dropped_after(settings: Settings, redis: ArqRedis) -> AsyncIterator[None]:
    yield
    await drop_queue(redis, settings.queue_name)


@pytest.fixture
def env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    return cli_env(settings, tmp_path)


async def test_import_by_its_old_flag_still_works_and_says_it_is_deprecated(
    redis: ArqRedis, env: dict[str, str], tmp_path: Path
) -> None:
    done = await etl(
        "enqueue", "import", "--dataset", "customers", "--file", "c.csv", env=env, cwd=tmp_path
    )
    assert done.code == 0, done.stderr
    assert done.stderr == (
        "etl: --file is deprecated for `etl enqueue import`: use --path (a file in the "
        "worker's import directory; --file reads a local file in other commands)\n"
    )
    state = json.loads(
        (await etl("status", done.stdout.strip(), "--json", env=env, cwd=tmp_path)).stdout
    )
    assert state["kwargs"]["path"] == "c.csv"


async def _database_away(ctx: dict[str, Any], **kwargs: Any) -> None:
    raise PermanentError("the database was away")


async def test_replace_failed_enqueues_a_failed_job_again_under_its_id(
    settings: Settings, redis: ArqRedis, env: dict[str, str], tmp_path: Path, clean_db: None
) -> None:
    job_id = f"nightly-ping-{uuid.uuid4().hex[:8]}"
    first = await etl("enqueue", "ping", "--job-id", job_id, env=env, cwd=tmp_path)
    assert first.code == 0, first.stderr
    await run_burst(settings, redis, functions=[func(_database_away, name="ping")])

    held = await etl("enqueue", "ping", "--job-id", job_id, "--json", env=env, cwd=tmp_path)
    assert json.loads(held.stdout) == {
        "job_id": job_id,
        "function": "ping",
        "created": False,
        "replaced": False,
    }
    assert held.stderr == f"a job with id {job_id} already exists: not enqueued again\n"

    args = ("enqueue", "ping", "--job-id", job_id, "--replace-failed")
    replaced = await etl(*args, env=env, cwd=tmp_path)
    assert (replaced.code, replaced.stdout) == (0, f"{job_id}\n")
    assert replaced.stderr == (
        f"the failed job {job_id} was replaced: enqueued again under its id\n"
    )
    await run_burst(settings, redis)
    state = json.loads((await etl("status", job_id, "--json", env=env, cwd=tmp_path)).stdout)
    assert (state["state"], state["result"]) == ("complete", {"pong": True, "database": True})

    # A complete job is never replaced.
    again = await etl(*args, "--json", env=env, cwd=tmp_path)
    assert (again.code, json.loads(again.stdout)["created"]) == (0, False)
    assert await redis.zcard(settings.queue_name) == 0


async def test_replace_failed_needs_a_job_id(env: dict[str, str], tmp_path: Path) -> None:
    done = await etl("enqueue", "ping", "--replace-failed", env=env, cwd=tmp_path)
    assert (done.code, done.stdout, done.stderr) == (
        2,
        "",
        "etl: --replace-failed: only with --job-id (a new id holds no failed job)\n",
    )


async def test_wait_json_that_gives_up_is_a_json_object_too(
    env: dict[str, str], tmp_path: Path
) -> None:
    done = await etl(
        "enqueue", "ping", "--wait", "--timeout", "0.3", "--json", env=env, cwd=tmp_path
    )
    assert done.code == 1
    document = json.loads(done.stdout)
    job_id = document.pop("job_id")
    text = f"job {job_id} still queued after 0.3 s; follow it with `etl status {job_id}`"
    assert document == {"status": "timed_out", "function": "ping", "state": "queued", "error": text}
    assert done.stderr == text + "\n"


@pytest.fixture
async def role_with_password(settings: Settings) -> AsyncIterator[tuple[str, str]]:
    """A login role with a password on the test server: (its name, its password)."""
    assert settings.database_url is not None
    role, password = f"etl_db_{uuid.uuid4().hex[:8]}", f"s3cr3t-{uuid.uuid4().hex}"
    admin = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    try:
        await admin.execute(f"create role {role} login password '{password}'")
        yield role, password
    finally:
        await admin.execute(f"drop role if exists {role}")
        await admin.close()


async def test_db_runs_psql_with_the_password_in_its_environment_only(
    settings: Settings, env: dict[str, str], tmp_path: Path, role_with_password: tuple[str, str]
) -> None:
    role, password = role_with_password
    assert settings.database_url is not None
    url = make_url(settings.database_url).set(username=role, password=password)
    env["DATABASE_URL"] = url.render_as_string(hide_password=False)
    proc = await asyncio.create_subprocess_exec(
        str(ETL), "db", "--", "-At", "-c", "select pg_sleep(1.5)", "-c", "select current_user",
        env=env, cwd=tmp_path, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    proc_dir = Path(f"/proc/{proc.pid}")
    # `etl` replaces itself with psql (same process, new command line; Debian's psql is a perl
    # wrapper that replaces itself with the real one): every command line it has is seen.
    seen: list[list[str]] = []
    for _ in range(1000):
        argv = (proc_dir / "cmdline").read_bytes().decode().split("\0")[:-1]
        if argv and argv not in seen:
            seen.append(argv)
        if argv and Path(argv[0]).name == "psql":
            break
        await asyncio.sleep(0.02)
    environ = (proc_dir / "environ").read_bytes().decode().split("\0")
    out, err = await asyncio.wait_for(proc.communicate(), 30)

    assert proc.returncode == 0, err
    assert out.decode().splitlines() == ["", role]
    host, port, database = url.host, url.port, url.database
    assert seen[-1][1:] == [
        "--host", str(host), "--port", str(port), "--username", role,
        "--dbname", str(database), "-At", "-c", "select pg_sleep(1.5)", "-c", "select current_user",
    ]  # fmt: skip
    assert not [argv for argv in seen if any(password in arg for arg in argv)]
    assert f"PGPASSWORD={password}" in environ
    assert password not in out.decode() + err.decode()
