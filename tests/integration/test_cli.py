"""The `etl` command as an operator runs it: separate processes, the real worker, real servers."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.worker import func
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.errors import PermanentError
from tests.support.database import head_revision
from tests.support.etl_process import (
    ETL,
    base_env,
    cli_env,
    drop_queue,
    etl,
    wait_until_key,
    worker_process,
)
from tests.support.worker_helpers import run_burst
from worker.keys import PROGRESS_KEY_PREFIX
from worker.serialization import serialize
from worker.settings import Settings

pytestmark = pytest.mark.timeout(240)

JOB_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # run_burst in this process must keep results as briefly as the CLI processes do.
    return settings.model_copy(update={"keep_result_s": 600})


@pytest.fixture(autouse=True)
async def _queue_dropped_after(settings: Settings, redis: ArqRedis) -> AsyncIterator[None]:
    yield
    await drop_queue(redis, settings.queue_name)


@pytest.fixture
def env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    return cli_env(settings, tmp_path)


async def _queued(redis: ArqRedis, settings: Settings) -> int:
    return int(await redis.zcard(settings.queue_name))


def test_the_console_script_is_installed() -> None:
    assert ETL.exists(), f"{ETL} missing: pip install -e . declares it"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["import", "--dataset", "nope", "--path", "x.csv"],
            "etl: --dataset: unknown dataset 'nope'; known: accounts, customers, transfers",
        ),
        (
            ["import", "--dataset", "customers", "--path", "x.csv", "--max-reject-ratio", "2"],
            "etl: --max-reject-ratio: Input should be less than or equal to 1",
        ),
        (
            ["import", "--dataset", "transfers", "--path", "x.csv"],
            "etl: --dataset: 'transfers' cannot be imported or upserted; "
            "use one of accounts, customers",
        ),
        (
            ["export", "--dataset", "customers", "--format", "xml"],
            "etl: --format: Input should be 'csv' or 'jsonl'",
        ),
        (
            ["transfer", "--from", "1", "--to", "2", "--amount", "5", "--id", "not-a-uuid"],
            "etl: --id: Input should be a valid UUID, invalid character: found `n` at 0",
        ),
        (["transfer", "--from", "1", "--to", "2"], "etl: --amount: required (or give --from-file)"),
        (["ping", "--timeout", "5"], "etl: --timeout: only with --wait"),
    ],
)
async def test_a_bad_argument_is_refused_and_nothing_is_enqueued(
    settings: Settings,
    redis: ArqRedis,
    env: dict[str, str],
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    done = await etl("enqueue", *args, env=env, cwd=tmp_path)
    assert (done.code, done.stdout, done.stderr) == (2, "", message + "\n")
    assert await _queued(redis, settings) == 0


async def test_a_bad_line_in_a_local_jsonl_file_is_named(
    settings: Settings, redis: ArqRedis, env: dict[str, str], tmp_path: Path
) -> None:
    rows = tmp_path / "ROWS.jsonl"
    rows.write_text('{"external_id": "a"}\n\n{"external_id": "b",\n')
    done = await etl(
        "enqueue", "upsert", "--dataset", "customers", "--file", "ROWS.jsonl", env=env, cwd=tmp_path
    )
    assert (done.code, done.stderr) == (2, "etl: ROWS.jsonl line 3: not JSON\n")

    transfers = tmp_path / "TRANSFERS.jsonl"
    transfers.write_text(
        json.dumps({"id": str(uuid.uuid4()), "from_account": 1, "to_account": 2, "amount_cents": 5})
        + "\n"
        + json.dumps({"from_account": 1, "to_account": 2, "amount_cents": "5"})
        + "\n"
    )
    done = await etl("enqueue", "transfer", "--file", "TRANSFERS.jsonl", env=env, cwd=tmp_path)
    assert done.code == 2
    assert done.stderr == (
        "etl: TRANSFERS.jsonl line 2: id: Field required; "
        "amount_cents: Input should be a valid integer\n"
    )

    done = await etl("enqueue", "transfer", "--file", "nope.jsonl", env=env, cwd=tmp_path)
    assert (done.code, done.stderr) == (2, "etl: --from-file: nope.jsonl: no such file\n")
    assert await _queued(redis, settings) == 0


async def test_enqueue_prints_the_id_and_status_follows_the_job(
    settings: Settings, redis: ArqRedis, env: dict[str, str], tmp_path: Path, clean_db: None
) -> None:
    done = await etl("enqueue", "ping", env=env, cwd=tmp_path)
    assert done.code == 0, done.stderr
    job_id = done.stdout.strip()
    assert JOB_ID.match(job_id)

    queued = await etl("status", job_id, "--json", env=env, cwd=tmp_path)
    state = json.loads(queued.stdout)
    assert (queued.code, state["state"], state["function"], state["tries"]) == (
        0,
        "queued",
        "ping",
        0,
    )
    assert state["kwargs"] == {"touch_db": True}

    # In progress, as the worker marks it, with the progress the runner publishes.
    await redis.set(in_progress_key_prefix + job_id, b"1", px=60_000)
    await redis.set("arq:retry:" + job_id, b"1", ex=60)
    await redis.set(PROGRESS_KEY_PREFIX + job_id, serialize({"rows_read": 5000}), ex=60)
    running = await etl("status", job_id, env=env, cwd=tmp_path)
    assert running.code == 0
    assert running.stdout.splitlines()[0] == f"job {job_id}: in progress (1 try)"
    assert "  progress: rows_read=5000" in running.stdout.splitlines()
    await redis.delete(in_progress_key_prefix + job_id, "arq:retry:" + job_id)

    await run_burst(settings, redis)
    complete = await etl("status", job_id, "--json", env=env, cwd=tmp_path)
    state = json.loads(complete.stdout)
    assert (state["state"], state["tries"], state["result"]) == (
        "complete",
        1,
        {"pong": True, "database": True},
    )
    text = await etl("status", job_id, env=env, cwd=tmp_path)
    assert text.stdout.splitlines()[0] == f"job {job_id}: complete (1 try)"
    assert "    pong: True" in text.stdout.splitlines()

    missing = await etl("status", "0" * 32, env=env, cwd=tmp_path)
    assert missing.code == 1
    assert missing.stdout.startswith(f"job {'0' * 32}: not found")


async def test_enqueue_with_a_job_id_enqueues_once(
    settings: Settings, redis: ArqRedis, env: dict[str, str], tmp_path: Path
) -> None:
    # Job ids are global to the Redis database (arq's keys do not carry the queue's name).
    job_id = f"orders-2024-01-01-{uuid.uuid4().hex[:8]}"
    first = await etl("enqueue", "ping", "--job-id", job_id, env=env, cwd=tmp_path)
    again = await etl("enqueue", "ping", "--job-id", job_id, env=env, cwd=tmp_path)
    assert (first.code, first.stdout, first.stderr) == (0, f"{job_id}\n", "")
    assert (again.code, again.stdout) == (0, f"{job_id}\n")
    assert again.stderr == f"a job with id {job_id} already exists: not enqueued again\n"
    assert await _queued(redis, settings) == 1
    other = await etl("enqueue", "ping", "--no-db", "--job-id", job_id, env=env, cwd=tmp_path)
    assert (other.code, other.stdout) == (1, "")
    assert other.stderr == (
        f"etl: job id '{job_id}' is already used by ping (queued) with other arguments: "
        '{"touch_db": true}; use a new job id\n'
    )
    assert await _queued(redis, settings) == 1


async def test_failed_lists_a_job_that_failed_in_the_worker(
    settings: Settings, redis: ArqRedis, env: dict[str, str], tmp_path: Path, clean_db: None
) -> None:
    # An app in another language enqueued a payload the worker refuses.
    job = await redis.enqueue_job("ping", touch_db="maybe", _queue_name=settings.queue_name)
    assert job is not None
    worker = await run_burst(settings, redis)
    assert worker.jobs_failed == 1

    listed = await etl("failed", "--json", env=env, cwd=tmp_path)
    assert listed.code == 0, listed.stderr
    [failure] = json.loads(listed.stdout)
    assert (failure["job_id"], failure["function"], failure["tries"]) == (job.job_id, "ping", 1)
    assert failure["kwargs"] == {"touch_db": "maybe"}
    assert failure["error"]["kind"] == "InvalidPayload"
    assert failure["error"]["message"].startswith("invalid payload: touch_db: Input should be")

    text = await etl("failed", env=env, cwd=tmp_path)
    lines = text.stdout.splitlines()
    assert re.match(rf"^\S+  {job.job_id}  ping  tries=1$", lines[0])
    assert lines[1].startswith("    error: InvalidPayload: invalid payload: touch_db:")
    assert lines[2] == '    arguments: {"touch_db": "maybe"}'

    # Retrying it as it was would fail the same way: refused.
    refused = await etl("retry", job.job_id, env=env, cwd=tmp_path)
    assert refused.code == 1
    assert refused.stderr.startswith(
        f"etl: job {job.job_id} cannot succeed as enqueued: invalid payload: touch_db:"
    )
    assert await _queued(redis, settings) == 0


async def _database_away(ctx: dict[str, Any], **kwargs: Any) -> None:
    raise PermanentError("the database was away")


async def test_retry_enqueues_a_failed_job_again_under_a_new_id(
    settings: Settings, redis: ArqRedis, env: dict[str, str], tmp_path: Path, clean_db: None
) -> None:
    job_id = (await etl("enqueue", "ping", env=env, cwd=tmp_path)).stdout.strip()
    await run_burst(settings, redis, functions=[func(_database_away, name="ping")])

    retried = await etl("retry", job_id, env=env, cwd=tmp_path)
    assert retried.code == 0, retried.stderr
    new_id = retried.stdout.strip()
    assert JOB_ID.match(new_id) and new_id != job_id
    twice = await etl("retry", job_id, env=env, cwd=tmp_path)
    assert (twice.code, twice.stderr) == (
        1,
        f"etl: job {job_id} was already retried as {new_id}\n",
    )
    assert json.loads((await etl("failed", "--json", env=env, cwd=tmp_path)).stdout) == []
    shown = json.loads((await etl("failed", "--all", "--json", env=env, cwd=tmp_path)).stdout)
    assert [(f["job_id"], f["retried_as"]) for f in shown] == [(job_id, new_id)]

    await run_burst(settings, redis)
    state = json.loads((await etl("status", new_id, "--json", env=env, cwd=tmp_path)).stdout)
    assert (state["state"], state["kwargs"]) == ("complete", {"touch_db": True})


async def test_check_needs_a_live_worker(
    settings: Settings, redis: ArqRedis, env: dict[str, str], tmp_path: Path
) -> None:
    health_key = f"{settings.queue_name}:health-check"
    before = await etl("check", env=env, cwd=tmp_path)
    assert before.code == 1
    assert before.stdout == ""
    assert before.stderr == (
        f"check failed: no worker is running on queue {settings.queue_name!r} "
        f"(no fresh health key {health_key!r}; start one with `etl worker`)\n"
    )

    async with worker_process(env, tmp_path, redis=redis, queue=settings.queue_name):
        during = await etl("check", env=env, cwd=tmp_path)
        assert during.code == 0, during.stderr
        assert during.stdout.startswith(
            f"ok: PostgreSQL and Redis answer; worker on queue {settings.queue_name!r}: "
        )
        assert "j_complete=0" in during.stdout
    # A worker that stops cleanly removes its health key.
    await wait_until_key(redis, health_key, present=False, within=10)
    after = await etl("check", env=env, cwd=tmp_path)
    assert after.code == 1


async def test_wait_prints_the_result_as_one_json_document(
    settings: Settings, redis: ArqRedis, env: dict[str, str], tmp_path: Path, clean_db: None
) -> None:
    async with worker_process(env, tmp_path, redis=redis, queue=settings.queue_name):
        done = await etl("enqueue", "ping", "--wait", "--json", env=env, cwd=tmp_path)
        assert done.code == 0, done.stderr
        assert json.loads(done.stdout) == {"pong": True, "database": True}
        assert done.stdout.count("\n") == 1

        text = await etl("enqueue", "ping", "--no-db", "--wait", env=env, cwd=tmp_path)
        assert text.code == 0, text.stderr
        lines = text.stdout.splitlines()
        assert re.match(r"^job [0-9a-f]{32} \(ping\) complete$", lines[0])
        assert lines[1:] == ["  pong: True", "  database: False"]
        assert re.match(r"^enqueued ping as job [0-9a-f]{32}; waiting for it$", text.stderr)


async def test_wait_exits_1_with_the_jobs_error_when_it_fails(
    settings: Settings, redis: ArqRedis, env: dict[str, str], tmp_path: Path, clean_db: None
) -> None:
    async with worker_process(env, tmp_path, redis=redis, queue=settings.queue_name):
        done = await etl(
            "enqueue",
            "import",
            "--dataset",
            "customers",
            "--path",
            "missing.csv",
            "--wait",
            "--json",
            env=env,
            cwd=tmp_path,
        )
    error = f"missing.csv: no such file in the import directory {settings.import_dir}"
    assert done.code == 1
    # --json: a JSON object on stdout, failure or not; the same error on stderr.
    failure = json.loads(done.stdout)
    failure_id = failure.pop("job_id")
    assert JOB_ID.match(failure_id)
    assert failure == {
        "status": "failed",
        "function": "import_file",
        "error_type": "InputFileError",
        "error": error,
        "tries": 1,
    }
    assert done.stderr == (
        f"job {failure_id} (import_file) failed after 1 try: InputFileError: {error}\n"
    )


async def test_wait_gives_up_after_the_timeout(
    settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    done = await etl("enqueue", "ping", "--wait", "--timeout", "0.5", env=env, cwd=tmp_path)
    assert done.code == 1
    assert re.search(
        r"job (\w+) still queued after 0.5 s; follow it with `etl status \1`", done.stderr
    )


async def _insert(engine: AsyncEngine, sql: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(sql))


async def test_import_through_the_cli(
    settings: Settings, redis: ArqRedis, env: dict[str, str], tmp_path: Path, clean_db: None
) -> None:
    (settings.import_dir / "customers.csv").write_text(
        "external_id,email,full_name,country\n"
        "c-1,ann@example.com,Ann,GB\n"
        "c-2,bob@example.com,Bob,DE\n"
        "c-3,not-an-email,Cy,FR\n"
    )
    async with worker_process(env, tmp_path, redis=redis, queue=settings.queue_name):
        imported = await etl(
            "enqueue", "import", "--dataset", "customers", "--path", "customers.csv",
            "--max-reject-ratio", "0.5", "--wait", "--json", env=env, cwd=tmp_path,
        )  # fmt: skip
    assert imported.code == 0, imported.stderr
    result = json.loads(imported.stdout)
    assert (result["rows_read"], result["inserted"], result["rejected"]) == (3, 2, 1)


async def test_export_through_the_cli(
    settings: Settings,
    redis: ArqRedis,
    engine: AsyncEngine,
    env: dict[str, str],
    tmp_path: Path,
    clean_db: None,
) -> None:
    await _insert(
        engine,
        "insert into customers (external_id, email, full_name, country, created_at) values"
        " ('c-1', 'ann@example.com', 'Ann', 'GB', now()),"
        " ('c-2', 'bob@example.com', 'Bob', 'DE', now())",
    )
    async with worker_process(env, tmp_path, redis=redis, queue=settings.queue_name):
        exported = await etl(
            "enqueue", "export", "--dataset", "customers", "--format", "jsonl", "--gzip",
            "--wait", "--json", env=env, cwd=tmp_path,
        )  # fmt: skip
    assert exported.code == 0, exported.stderr
    export = json.loads(exported.stdout)
    assert (export["rows"], export["format"], export["compressed"]) == (2, "jsonl", True)
    path = Path(export["path"])
    assert path.is_relative_to(settings.export_dir)
    assert _size(path) == export["bytes"]


def _size(path: Path) -> int | None:
    return path.stat().st_size if path.exists() else None


async def test_transfer_arguments_through_the_cli(
    settings: Settings,
    redis: ArqRedis,
    engine: AsyncEngine,
    env: dict[str, str],
    tmp_path: Path,
    clean_db: None,
) -> None:
    await _insert(
        engine,
        "insert into accounts (id, currency, balance_cents) values (1, 'EUR', 1000), (2, 'EUR', 0)",
    )
    transfer_id = str(uuid.uuid4())
    async with worker_process(env, tmp_path, redis=redis, queue=settings.queue_name):
        moved = await etl(
            "enqueue", "transfer", "--from", "1", "--to", "2", "--amount", "300",
            "--id", transfer_id, "--wait", "--json", env=env, cwd=tmp_path,
        )  # fmt: skip
        too_much = await etl(
            "enqueue", "transfer", "--from", "1", "--to", "2", "--amount", "5000",
            "--wait", "--json", env=env, cwd=tmp_path,
        )  # fmt: skip
    assert moved.code == 0, moved.stderr
    assert json.loads(moved.stdout)["results"] == [
        {"id": transfer_id, "status": "applied", "reason": None}
    ]
    assert too_much.code == 0, too_much.stderr
    [outcome] = json.loads(too_much.stdout)["results"]
    assert (outcome["status"], outcome["reason"]) == (
        "rejected",
        "insufficient funds: from_account holds 700 cents, amount_cents is 5000",
    )
    assert uuid.UUID(outcome["id"]).version == 4


SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    "args",
    [
        ["check"],
        ["migrate"],
        ["worker", "--burst"],
        ["enqueue", "ping"],
        ["status", "abc"],
        ["failed"],
        ["retry", "abc"],
        ["demo"],
    ],
)
async def test_no_password_in_any_output_when_the_servers_are_unreachable(
    tmp_path: Path, args: list[str]
) -> None:
    env = base_env(
        DATABASE_URL=f"postgresql://etl:{SECRET}@127.0.0.1:1/etl",
        REDIS_URL=f"redis://:{SECRET}@127.0.0.1:1/0",
        ETL_STATE_DIR=str(tmp_path / "state"),
        ETL_IMPORT_DIR=str(tmp_path / "inbox"),
        LOG_FORMAT="json",
    )
    done = await etl(*args, env=env, cwd=tmp_path)
    assert done.code == 1, done.output
    assert SECRET not in done.output
    assert "Traceback" not in done.output
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("etl: cannot reach ") or last.startswith("check failed: cannot reach ")
    assert "***@127.0.0.1:1" in last


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (
            {"DATABASE_URL": f"mysql://etl:{SECRET}@db/etl", "LOG_FORMAT": "xml"},
            [
                "DATABASE_URL: scheme 'mysql' is not supported (use postgresql://)",
                "LOG_FORMAT: Input should be 'json' or 'console'",
            ],
        ),
        (
            {"REDIS_URL": f"http://:{SECRET}@cache:6379", "ETL_MAX_JOBS": "0"},
            [
                "REDIS_URL: must start with redis://, rediss://, unix:// or redis+sentinel://",
                "ETL_MAX_JOBS: Input should be greater than or equal to 1",
            ],
        ),
        (
            {"DATABASE_URL": f"postgresql://etl:{SECRET}@/"},
            ["DATABASE_URL: names no database (expected postgresql://user@host/db)"],
        ),
    ],
)
async def test_bad_settings_are_named_without_their_values(
    tmp_path: Path, variables: dict[str, str], expected: list[str]
) -> None:
    env = base_env(ETL_STATE_DIR=str(tmp_path / "state"), **variables)
    done = await etl("enqueue", "ping", env=env, cwd=tmp_path)
    assert (done.code, done.stdout) == (2, "")
    assert done.stderr.splitlines() == expected
    assert SECRET not in done.output


async def test_without_urls_a_second_process_uses_the_workers_embedded_servers(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    env = base_env(ETL_STATE_DIR=str(state), LOG_FORMAT="json")
    try:
        migrated = await etl("migrate", env=env, cwd=tmp_path, within=120)
        assert migrated.code == 0, migrated.stderr
        assert migrated.stdout == (
            f"database postgresql+asyncpg://postgres@/postgres?host={state}/pg "
            f"is at revision {head_revision()} (head)\n"
        )
        async with worker_process(env, tmp_path) as worker:
            done = await etl(
                "enqueue", "ping", "--wait", "--json", "--timeout", "60", env=env, cwd=tmp_path
            )
            assert worker.returncode is None
        assert done.code == 0, done.stderr + (tmp_path / "worker.err").read_text()
        assert json.loads(done.stdout) == {"pong": True, "database": True}
        # Both processes logged the same servers, under the same state dir.
        worker_lines = [
            json.loads(line) for line in (tmp_path / "worker.out").read_text().splitlines()
        ]
        [started] = [line for line in worker_lines if line["event"] == "engine.created"]
        assert started["database"] == f"postgresql+asyncpg://postgres@/postgres?host={state}/pg"
    finally:
        stopped = await etl("embedded", "stop", env=env, cwd=tmp_path)
    assert stopped.code == 0
    assert stopped.stdout == f"stopped the embedded postgres and redis under {state}\n"
