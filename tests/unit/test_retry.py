"""The retry policy: backoff arithmetic, and how the runner maps a job's failure for arq.

The runner is called directly with arq's ctx; the engine is created but never connects (these jobs
touch no database), and there is no Redis in ctx, so nothing here does I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from arq import Retry
from pydantic import BaseModel
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from jobs.backoff import backoff_delay
from jobs.errors import InvalidPayload, JobTimeout, TooManyRejects, TransientError, UnexpectedError
from jobs.models import Payload
from jobs.spec import JobRun, etl_job
from worker.context import CTX_KEY, AppContext
from worker.db import create_engine, create_sessionmaker
from worker.main import ARQ_TIMEOUT_MARGIN_S, build_worker_settings, functions
from worker.runner import execute
from worker.settings import Settings


def test_backoff_doubles_from_base_up_to_cap() -> None:
    ceilings = [backoff_delay(t, base_s=1, cap_s=60, rand=lambda: 1.0) for t in range(1, 10)]
    assert ceilings == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_backoff_jitter_keeps_half_of_the_delay() -> None:
    assert backoff_delay(3, base_s=1, cap_s=60, rand=lambda: 0.0) == 2.0
    assert backoff_delay(3, base_s=1, cap_s=60, rand=lambda: 0.5) == 3.0
    assert backoff_delay(20, base_s=1, cap_s=60, rand=lambda: 0.0) == 30.0


def test_backoff_with_real_randomness_stays_in_its_window_and_varies() -> None:
    delays = [backoff_delay(2, base_s=0.5, cap_s=10) for _ in range(200)]
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 100  # jobs failed together do not come back together


def test_backoff_survives_absurd_try_counts() -> None:
    # 2 ** 5000 does not fit in a float; the delay is simply at its cap.
    assert backoff_delay(5000, base_s=1, cap_s=60, rand=lambda: 1.0) == 60.0
    assert backoff_delay(0, base_s=1, cap_s=60, rand=lambda: 1.0) == 1.0


class SomePayload(Payload):
    fail_with: str = ""


class SomeResult(BaseModel):
    ok: bool


FAILURES: dict[str, BaseException] = {
    "deadlock": asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
    "refused": ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"),
    "rejects": TooManyRejects("12 of 100 rows rejected (limit 5%); nothing was loaded"),
    "bug": KeyError("balance_cents"),
    "own_timeout": TimeoutError(),
}


@etl_job(name="some_job", payload=SomePayload, result=SomeResult, timeout_s=5)
async def some_job(run: JobRun, payload: SomePayload) -> SomeResult:
    if payload.fail_with:
        raise FAILURES[payload.fail_with]
    return SomeResult(ok=True)


class StatusResult(BaseModel):
    status: str
    event: str
    rows: int


@etl_job(name="odd_result_job", payload=SomePayload, result=StatusResult, timeout_s=5)
async def odd_result_job(run: JobRun, payload: SomePayload) -> StatusResult:
    if payload.fail_with == "asks_to_retry":
        raise Retry(defer=7)
    return StatusResult(status="done", event="created", rows=3)


@etl_job(name="slow_job", payload=SomePayload, result=SomeResult, timeout_s=0.05)
async def slow_job(run: JobRun, payload: SomePayload) -> SomeResult:
    await asyncio.sleep(5)
    return SomeResult(ok=True)


@pytest.fixture
def unit_settings() -> Settings:
    return Settings(
        DATABASE_URL="postgresql://etl@db.invalid/etl",
        REDIS_URL="redis://redis.invalid:6379/0",
        ETL_MAX_TRIES=3,
        ETL_RETRY_BASE=2,
        ETL_RETRY_CAP=30,
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
async def app(unit_settings: Settings) -> AsyncIterator[AppContext]:
    engine = create_engine(unit_settings)
    yield AppContext(
        settings=unit_settings, engine=engine, sessionmaker=create_sessionmaker(engine)
    )
    await engine.dispose()


def arq_ctx(app: AppContext, job_try: int) -> dict[str, Any]:
    return {CTX_KEY: app, "job_id": "job-1", "job_try": job_try}


def finished(logs: list[dict[str, Any]]) -> dict[str, Any]:
    [line] = [entry for entry in logs if entry["event"] == "job.finished"]
    return line


async def test_transient_failure_is_retried_with_backoff_and_the_log_says_which_try_and_why(
    app: AppContext,
) -> None:
    with capture_logs(processors=[merge_contextvars]) as logs, pytest.raises(Retry) as raised:
        await execute(some_job, arq_ctx(app, job_try=2), fail_with="deadlock")
    # Try 2 of 3 failed: the next one comes after base*2, half of it jittered: 2..4 s.
    assert raised.value.defer_score is not None
    assert 2000 <= raised.value.defer_score <= 4000
    line = finished(logs)
    assert line["status"] == "retrying"
    assert line["job_try"] == 2
    assert line["max_tries"] == 3
    assert line["error"] == "DeadlockDetectedError: deadlock detected"
    assert line["error_type"] == "DeadlockDetectedError"
    assert 2 <= line["retry_in_s"] <= 4


async def test_lost_connection_is_retried(app: AppContext) -> None:
    with pytest.raises(Retry):
        await execute(some_job, arq_ctx(app, job_try=1), fail_with="refused")


async def test_transient_failure_on_the_last_try_fails_with_the_reason(app: AppContext) -> None:
    with capture_logs() as logs, pytest.raises(TransientError) as raised:
        await execute(some_job, arq_ctx(app, job_try=3), fail_with="deadlock")
    assert str(raised.value) == "gave up after 3 tries: DeadlockDetectedError: deadlock detected"
    assert isinstance(raised.value.__cause__, asyncpg.exceptions.DeadlockDetectedError)
    line = finished(logs)
    assert line["status"] == "failed"
    assert line["error"] == "gave up after 3 tries: DeadlockDetectedError: deadlock detected"
    assert "retry_in_s" not in line


async def test_permanent_failure_fails_at_once_on_the_first_try(app: AppContext) -> None:
    with capture_logs() as logs, pytest.raises(TooManyRejects) as raised:
        await execute(some_job, arq_ctx(app, job_try=1), fail_with="rejects")
    assert raised.value is FAILURES["rejects"]
    line = finished(logs)
    assert line["status"] == "failed"
    assert line["error"] == "12 of 100 rows rejected (limit 5%); nothing was loaded"
    assert "retry_in_s" not in line
    assert [entry for entry in logs if entry["event"] == "job.crashed"] == []


async def test_unexpected_error_fails_at_once_as_job_failed_naming_it(app: AppContext) -> None:
    with capture_logs() as logs, pytest.raises(UnexpectedError) as raised:
        await execute(some_job, arq_ctx(app, job_try=1), fail_with="bug")
    # The one line `etl failed` shows; the original stays attached for the traceback.
    assert str(raised.value) == "KeyError: 'balance_cents'"
    assert raised.value.__cause__ is FAILURES["bug"]
    assert finished(logs)["status"] == "failed"
    # A bug: its traceback is logged once, as job.crashed.
    assert len([entry for entry in logs if entry["event"] == "job.crashed"]) == 1


async def test_invalid_payload_names_the_field_and_is_not_retried(app: AppContext) -> None:
    with pytest.raises(InvalidPayload) as raised:
        await execute(some_job, arq_ctx(app, job_try=1), fail_with=["x"], extra=1)
    assert str(raised.value) == (
        "invalid payload: fail_with: Input should be a valid string; "
        "extra: Extra inputs are not permitted"
    )


async def test_a_job_over_its_time_limit_fails_with_a_named_error_and_no_retry(
    app: AppContext,
) -> None:
    with capture_logs() as logs, pytest.raises(JobTimeout) as raised:
        await execute(slow_job, arq_ctx(app, job_try=1))
    assert str(raised.value) == (
        "slow_job did not finish within its 0.05 s time limit and was stopped; it is not retried"
    )
    assert finished(logs)["status"] == "failed"


async def test_a_timeout_inside_the_job_is_a_transient_failure_not_an_overrun(
    app: AppContext,
) -> None:
    with pytest.raises(Retry):
        await execute(some_job, arq_ctx(app, job_try=1), fail_with="own_timeout")


async def test_cancelled_job_is_logged_as_cancelled_and_cancellation_goes_through(
    app: AppContext,
) -> None:
    with capture_logs() as logs:
        task = asyncio.create_task(execute(slow_job, arq_ctx(app, job_try=1)))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert finished(logs)["status"] == "cancelled"


def test_arq_gets_the_tries_and_a_timeout_just_past_the_runners_own(
    unit_settings: Settings,
) -> None:
    from jobs.catalogue import FUNCTIONS

    registered = {f.name: f for f in functions(unit_settings)}
    for job in FUNCTIONS:
        assert registered[job.name].max_tries == 3
        assert registered[job.name].timeout_s == job.timeout_s + ARQ_TIMEOUT_MARGIN_S


def test_worker_waits_the_shutdown_grace_before_cancelling(unit_settings: Settings) -> None:
    graced = unit_settings.model_copy(update={"shutdown_grace_s": 12.5})
    kwargs = build_worker_settings(graced)
    assert kwargs["job_completion_wait"] == 12.5
    assert kwargs["max_tries"] == 3


async def test_a_job_asking_arq_to_retry_is_deferred_as_it_asked(app: AppContext) -> None:
    with capture_logs() as logs, pytest.raises(Retry) as raised:
        await execute(odd_result_job, arq_ctx(app, job_try=1), fail_with="asks_to_retry")
    assert raised.value.defer_score == 7000
    assert finished(logs)["status"] == "retrying"


async def test_result_fields_named_like_the_lines_own_do_not_break_it(app: AppContext) -> None:
    with capture_logs() as logs:
        result = await execute(odd_result_job, arq_ctx(app, job_try=1))
    assert result == {"status": "done", "event": "created", "rows": 3}
    line = finished(logs)
    assert (line["status"], line["rows"]) == ("complete", 3)
