"""Retries through the real worker, with failures PostgreSQL itself produces.

Transient failures (serialization failure, a terminated connection, a real deadlock) are retried
with backoff and the job's writes land once; permanent ones fail on the first try and leave their
error in Redis as `{"__error__": ..., "message": ...}` for `etl status` and `etl failed`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, result_key_prefix
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from jobs.catalogue import FUNCTIONS
from jobs.models import Payload
from jobs.spec import JobRun, etl_job
from tests.support.worker_helpers import run_burst
from worker.main import functions
from worker.redis import connect
from worker.runner import _heartbeat
from worker.settings import Settings


class FlakyPayload(Payload):
    key: str
    fail_times: int = 0
    how: Literal["serialization", "terminate"] = "serialization"


class Tries(BaseModel):
    tries: int


@etl_job(name="flaky_insert", payload=FlakyPayload, result=Tries, timeout_s=30)
async def flaky_insert(run: JobRun, payload: FlakyPayload) -> Tries:
    """Insert one customer; on the first `fail_times` tries, fail the way PostgreSQL does."""
    async with run.sessionmaker() as session, session.begin():
        conn = await session.connection()
        await conn.execute(
            text(
                "insert into customers (external_id, email, full_name, country, created_at) "
                "values (:key, :key || '@example.com', 'Flaky', 'FR', now())"
            ),
            {"key": payload.key},
        )
        if run.job_try <= payload.fail_times:
            if payload.how == "serialization":
                await conn.execute(
                    text(
                        "do $$ begin raise exception 'could not serialize access due to "
                        "concurrent update' using errcode = '40001'; end $$"
                    )
                )
            else:
                # What a PostgreSQL restart or an operator's pg_terminate_backend does to a job.
                await conn.execute(text("select pg_terminate_backend(pg_backend_pid())"))
    return Tries(tries=run.job_try)


class PairPayload(Payload):
    first: int
    second: int
    cents: int


@etl_job(name="credit_pair", payload=PairPayload, result=Tries, timeout_s=30)
async def credit_pair(run: JobRun, payload: PairPayload) -> Tries:
    """Credit two accounts in the given order, pausing between: two of these in opposite orders
    deadlock, and PostgreSQL aborts one of them."""
    async with run.sessionmaker() as session, session.begin():
        conn = await session.connection()
        for account, pause in ((payload.first, 0.5), (payload.second, 0.0)):
            await conn.execute(
                text("update accounts set balance_cents = balance_cents + :c where id = :id"),
                {"c": payload.cents, "id": account},
            )
            await asyncio.sleep(pause)
    return Tries(tries=run.job_try)


class SlowPayload(Payload):
    key: str


@etl_job(name="overrun", payload=SlowPayload, result=Tries, timeout_s=0.3)
async def overrun(run: JobRun, payload: SlowPayload) -> Tries:
    async with run.sessionmaker() as session, session.begin():
        conn = await session.connection()
        await conn.execute(
            text(
                "insert into customers (external_id, email, full_name, country, created_at) "
                "values (:key, 'o@example.com', 'Overrun', 'FR', now())"
            ),
            {"key": payload.key},
        )
        await asyncio.sleep(10)
    return Tries(tries=run.job_try)


@etl_job(name="hold", payload=SlowPayload, result=Tries, timeout_s=30)
async def hold(run: JobRun, payload: SlowPayload) -> Tries:
    await asyncio.sleep(1.2)
    return Tries(tries=run.job_try)


def with_test_jobs(settings: Settings) -> list[Any]:
    return functions(settings, [*FUNCTIONS, flaky_insert, credit_pair, overrun, hold])


async def stored_result(redis: ArqRedis, job_id: str) -> dict[str, Any]:
    """The job's outcome exactly as Redis holds it (arq's result record, as JSON)."""
    raw = await redis.get(result_key_prefix + job_id)
    assert raw is not None, f"no result for {job_id}"
    record: dict[str, Any] = json.loads(raw)
    return record


async def enqueue(redis: ArqRedis, settings: Settings, function: str, **kwargs: Any) -> str:
    job = await redis.enqueue_job(function, _queue_name=settings.queue_name, **kwargs)
    assert job is not None
    return job.job_id


def finished_lines(logs: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "job.finished" and e.get("job_id") == job_id]


async def count_customers(engine: AsyncEngine, key: str) -> int:
    async with engine.connect() as conn:
        found = await conn.scalar(
            text("select count(*) from customers where external_id = :k"), {"k": key}
        )
    return int(found or 0)


async def test_serialization_failures_are_retried_and_the_row_lands_once(
    settings: Settings, redis: ArqRedis, engine: AsyncEngine, clean_db: None
) -> None:
    job_id = await enqueue(redis, settings, "flaky_insert", key="c-1", fail_times=2)
    with capture_logs(processors=[merge_contextvars]) as logs:
        worker = await run_burst(settings, redis, functions=with_test_jobs(settings))
    assert (worker.jobs_complete, worker.jobs_retried, worker.jobs_failed) == (1, 2, 0)
    record = await stored_result(redis, job_id)
    assert record["s"] is True
    assert record["t"] == 3
    assert record["r"] == {"tries": 3}
    assert await count_customers(engine, "c-1") == 1

    lines = finished_lines(logs, job_id)
    assert [(e["status"], e["job_try"]) for e in lines] == [
        ("retrying", 1),
        ("retrying", 2),
        ("complete", 3),
    ]
    for line in lines[:2]:
        assert line["error"] == (
            "SerializationError: could not serialize access due to concurrent update"
        )
        assert line["max_tries"] == settings.max_tries
        # The fixture's policy: base 0.05 s, cap 0.2 s, half jittered.
        assert 0.025 <= line["retry_in_s"] <= 0.2


async def test_terminated_connection_is_retried_on_a_fresh_one(
    settings: Settings, redis: ArqRedis, engine: AsyncEngine, clean_db: None
) -> None:
    job_id = await enqueue(
        redis, settings, "flaky_insert", key="c-2", fail_times=1, how="terminate"
    )
    with capture_logs(processors=[merge_contextvars]) as logs:
        worker = await run_burst(settings, redis, functions=with_test_jobs(settings))
    assert (worker.jobs_complete, worker.jobs_retried) == (1, 1)
    assert (await stored_result(redis, job_id))["r"] == {"tries": 2}
    assert await count_customers(engine, "c-2") == 1
    first = finished_lines(logs, job_id)[0]
    assert first["status"] == "retrying"
    assert (
        first["error"] == "AdminShutdownError: terminating connection due to administrator command"
    )


async def test_transient_failure_gives_up_after_max_tries_with_the_reason_kept(
    settings: Settings, redis: ArqRedis, engine: AsyncEngine, clean_db: None
) -> None:
    settings = settings.model_copy(update={"max_tries": 3})
    job_id = await enqueue(redis, settings, "flaky_insert", key="c-3", fail_times=99)
    with capture_logs(processors=[merge_contextvars]) as logs:
        worker = await run_burst(settings, redis, functions=with_test_jobs(settings))
    assert (worker.jobs_complete, worker.jobs_retried, worker.jobs_failed) == (0, 2, 1)
    record = await stored_result(redis, job_id)
    assert record["s"] is False
    assert record["t"] == 3
    assert record["r"] == {
        "__error__": "TransientError",
        "message": "gave up after 3 tries: "
        "SerializationError: could not serialize access due to concurrent update",
    }
    assert await count_customers(engine, "c-3") == 0
    assert [e["status"] for e in finished_lines(logs, job_id)] == ["retrying", "retrying", "failed"]


async def test_a_real_deadlock_is_retried_and_both_jobs_apply_once(
    settings: Settings, redis: ArqRedis, engine: AsyncEngine, clean_db: None
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "insert into accounts (id, currency, balance_cents) values (1, 'EUR', 1000), "
                "(2, 'EUR', 1000)"
            )
        )
    one = await enqueue(redis, settings, "credit_pair", first=1, second=2, cents=10)
    two = await enqueue(redis, settings, "credit_pair", first=2, second=1, cents=300)
    with capture_logs(processors=[merge_contextvars]) as logs:
        worker = await run_burst(settings, redis, functions=with_test_jobs(settings), max_jobs=2)
    assert (worker.jobs_complete, worker.jobs_retried, worker.jobs_failed) == (2, 1, 0)
    tries = sorted([(await stored_result(redis, j))["r"]["tries"] for j in (one, two)])
    assert tries == [1, 2]
    async with engine.connect() as conn:
        balances = (
            await conn.execute(text("select id, balance_cents from accounts order by id"))
        ).all()
    assert [tuple(row) for row in balances] == [(1, 1310), (2, 1310)]
    retried = [e for e in logs if e["event"] == "job.finished" and e["status"] == "retrying"]
    assert len(retried) == 1
    assert retried[0]["error"].startswith("DeadlockDetectedError: deadlock detected")


async def test_invalid_payload_fails_once_with_its_error_kept_in_redis(
    settings: Settings, redis: ArqRedis, clean_db: None
) -> None:
    job_id = await enqueue(redis, settings, "ping", touch_db="perhaps", extra=1)
    worker = await run_burst(settings, redis)
    assert (worker.jobs_complete, worker.jobs_retried, worker.jobs_failed) == (0, 0, 1)
    record = await stored_result(redis, job_id)
    assert (record["s"], record["t"]) == (False, 1)
    assert record["r"] == {
        "__error__": "InvalidPayload",
        "message": "invalid payload: touch_db: Input should be a valid boolean, "
        "unable to interpret input; extra: Extra inputs are not permitted",
    }


async def test_unknown_dataset_fails_once_naming_the_known_ones(
    settings: Settings, redis: ArqRedis, clean_db: None
) -> None:
    job_id = await enqueue(redis, settings, "import_file", dataset="orders", path="a.csv")
    worker = await run_burst(settings, redis)
    assert (worker.jobs_retried, worker.jobs_failed) == (0, 1)
    record = await stored_result(redis, job_id)
    assert record["t"] == 1
    assert record["r"]["__error__"] == "InvalidPayload"
    assert record["r"]["message"] == (
        "invalid payload: dataset: unknown dataset 'orders'; known: accounts, customers, transfers"
    )


async def test_a_job_over_its_time_limit_is_stopped_rolled_back_and_not_retried(
    settings: Settings, redis: ArqRedis, engine: AsyncEngine, clean_db: None
) -> None:
    job_id = await enqueue(redis, settings, "overrun", key="c-4")
    worker = await run_burst(settings, redis, functions=with_test_jobs(settings))
    assert (worker.jobs_retried, worker.jobs_failed) == (0, 1)
    record = await stored_result(redis, job_id)
    assert record["r"] == {
        "__error__": "JobTimeout",
        "message": "overrun did not finish within its 0.3 s time limit and was stopped; "
        "it is not retried",
    }
    assert await count_customers(engine, "c-4") == 0


async def test_a_running_job_holds_its_in_progress_key_for_requeue_after_only(
    settings: Settings, redis: ArqRedis, clean_db: None
) -> None:
    # arq would hold it for the longest timeout + 10 s: over an hour with the import job's limit.
    settings = settings.model_copy(update={"requeue_after_s": 5})
    job_id = await enqueue(redis, settings, "hold", key="x")
    burst = asyncio.create_task(run_burst(settings, redis, functions=with_test_jobs(settings)))
    ttls: list[int] = []
    # A pool of its own: the burst worker closes the one it was given when it stops.
    watcher = await connect(settings)
    try:
        while not burst.done():
            ttl = await watcher.pttl(in_progress_key_prefix + job_id)
            if ttl > 0:
                ttls.append(ttl)
            await asyncio.sleep(0.05)
    finally:
        await watcher.aclose()
    worker = await burst
    assert worker.jobs_complete == 1
    assert ttls, "the job's in-progress key was never seen"
    assert max(ttls) <= 5000
    assert await redis.exists(in_progress_key_prefix + job_id) == 0


async def test_the_heartbeat_keeps_a_live_jobs_key_past_its_short_ttl(
    settings: Settings, redis: ArqRedis
) -> None:
    key = in_progress_key_prefix + "heartbeat-" + settings.queue_name
    await redis.psetex(key, 3_600_000, b"1")  # what arq sets: the longest timeout + 10 s
    try:
        with _heartbeat({"redis": redis}, key.removeprefix(in_progress_key_prefix), 1):
            await asyncio.sleep(0.1)  # the first beat goes out as soon as the job waits
            assert 0 < await redis.pttl(key) <= 1000
            await asyncio.sleep(2.5)  # two and a half TTLs: alive only if extended
            assert 0 < await redis.pttl(key) <= 1000
        # Once the job is over nothing extends it: a dead worker's hold ends within the TTL.
        await asyncio.sleep(1.2)
        assert await redis.exists(key) == 0
    finally:
        await redis.delete(key)


async def test_import_permanent_failures_fail_on_the_first_try_with_their_error_kept(
    settings: Settings, redis: ArqRedis, engine: AsyncEngine, clean_db: None
) -> None:
    inbox = settings.import_dir
    lines = ["external_id,email,full_name,country"]
    lines += [f"c{n},c{n}@example.com,C {n},{'FR' if n % 2 else 'FRANCE'}" for n in range(100)]
    (inbox / "half_bad.csv").write_text("\n".join(lines) + "\n")
    (inbox.parent / "outside.csv").write_text(lines[0] + "\n")
    jobs = {
        "outside": await enqueue(
            redis, settings, "import_file", dataset="customers", path="../outside.csv"
        ),
        "missing": await enqueue(
            redis, settings, "import_file", dataset="customers", path="missing.csv"
        ),
        "rejects": await enqueue(
            redis, settings, "import_file", dataset="customers", path="half_bad.csv"
        ),
    }
    worker = await run_burst(settings, redis)
    assert (worker.jobs_complete, worker.jobs_retried, worker.jobs_failed) == (0, 0, 3)
    errors = {}
    for name, job_id in jobs.items():
        record = await stored_result(redis, job_id)
        assert (record["s"], record["t"]) == (False, 1), name
        errors[name] = record["r"]
    assert errors["outside"]["__error__"] == "PathNotAllowed"
    assert "../outside.csv" in errors["outside"]["message"]
    assert errors["missing"]["__error__"] == "InputFileError"
    assert "missing.csv" in errors["missing"]["message"]
    assert errors["rejects"]["__error__"] == "TooManyRejects"
    assert "50" in errors["rejects"]["message"]
    for error in errors.values():
        assert "\n" not in error["message"]
    async with engine.connect() as conn:
        assert await conn.scalar(text("select count(*) from customers")) == 0
