"""How every job runs: payload validation, log context, retries, heartbeat, the canonical line.

Jobs are JobSpecs (jobs/spec.py); `arq_function(spec)` is what the worker registers with arq, and
`RunHandle` is the worker's side of the run handle a job receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import structlog
from arq import Retry
from arq.typing import WorkerCoroutine
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from jobs.backoff import backoff_delay
from jobs.errors import (
    EtlError,
    InvalidPayload,
    JobTimeout,
    TransientError,
    UnexpectedError,
    describe,
    is_expected,
    is_transient,
    payload_error,
)
from jobs.spec import JobConfig, JobSpec
from worker import tracing
from worker.context import AppContext, app_context
from worker.keys import PROGRESS_KEY_PREFIX, PROGRESS_TTL_S, in_progress_key_prefix
from worker.serialization import serialize

log = structlog.get_logger("worker.job")

PayloadT = TypeVar("PayloadT", bound=BaseModel)
ResultT = TypeVar("ResultT", bound=BaseModel)

_PROGRESS_EVERY_S = 2.0
# Publishing progress must not hold the job up while Redis is away (its client retries for a while).
_PROGRESS_PUBLISH_TIMEOUT_S = 1.0


def validate_payload(
    model: type[PayloadT], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> PayloadT:
    if args:
        raise InvalidPayload("invalid payload: this job takes keyword arguments only")
    try:
        return model.model_validate(kwargs)
    except ValidationError as exc:
        raise payload_error(exc) from None


@dataclass
class RunHandle:
    """The run handle (jobs.spec.JobRun) as the worker implements it: one per run of one job."""

    app: AppContext
    job_id: str
    job_try: int
    redis: Any = None
    counters: dict[str, int] = field(default_factory=dict)
    _last_progress: float = 0.0

    @property
    def config(self) -> JobConfig:
        return self.app.job_config

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        return self.app.sessionmaker

    async def progress(self, **counters: int) -> None:
        """Record progress; logged and published to Redis at most every couple of seconds."""
        self.counters.update(counters)
        now = time.monotonic()
        if now - self._last_progress < _PROGRESS_EVERY_S:
            return
        self._last_progress = now
        log.info("job.progress", **self.counters)
        if self.redis is not None:
            with contextlib.suppress(Exception):  # progress is best effort; the job goes on
                async with asyncio.timeout(_PROGRESS_PUBLISH_TIMEOUT_S):
                    await self.redis.set(
                        PROGRESS_KEY_PREFIX + self.job_id,
                        serialize(self.counters),
                        ex=PROGRESS_TTL_S,
                    )


def arq_function(spec: JobSpec[Any, Any]) -> WorkerCoroutine:
    """The coroutine arq calls for `spec`: `(ctx, **payload) -> result as a dict`."""

    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        return await execute(spec, ctx, *args, **kwargs)

    run.__qualname__ = run.__name__ = spec.name
    return cast(WorkerCoroutine, run)


@contextlib.asynccontextmanager
async def _heartbeat(ctx: dict[str, Any], job_id: str, ttl_s: int) -> AsyncIterator[None]:
    """Keep arq's in-progress key short-lived while the job runs.

    arq sets the key for the longest job timeout + 10 s, so a job whose worker was killed would wait
    that long (an hour, for imports) before any worker ran it again. Shortening the key to `ttl_s`
    before the job starts, and extending it every third of that while the job is alive, bounds the
    wait whatever the job's timeout. PEXPIRE never creates the key: once arq has deleted it (job
    finished) or Redis lost it, a late beat changes nothing.
    """
    redis = ctx.get("redis")
    if redis is None or not job_id:
        yield
        return
    key = in_progress_key_prefix + job_id

    async def extend() -> None:
        try:
            await redis.pexpire(key, ttl_s * 1000)
        except Exception as exc:  # Redis away for a moment: the job itself goes on
            log.warning("job.heartbeat_failed", error=describe(exc))

    async def beat() -> None:
        while True:
            await asyncio.sleep(ttl_s / 3)
            await extend()

    # The first beat is awaited: from here on a killed worker holds the job for ttl_s at most.
    await extend()
    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        # Wait for it, so no beat is still on its way once arq records the job's end. (wait()
        # does not raise the beat's CancelledError, but does let a cancellation of ours through.)
        await asyncio.wait({task})


def _counters(result: BaseModel) -> dict[str, Any]:
    """The result's numbers and short strings, for the canonical line."""
    out: dict[str, Any] = {}
    for key, value in result.model_dump(mode="json").items():
        if key == "event":
            continue  # structlog's own key
        if isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) < 200):
            out[key] = value
    # A result with nested parts (the nightly export's per-dataset files) flattens them itself.
    log_fields = getattr(result, "log_fields", None)
    if callable(log_fields):
        out.update(log_fields())
    return out


def finished_level(status: str, error: BaseException | None) -> int:
    """The canonical line's level: a failure is a warning when the input explains it, else an
    error (unexpected, a server given up on); anything else is info."""
    if status != "failed":
        return logging.INFO
    return logging.WARNING if is_expected(error) else logging.ERROR


def _observe_start(
    app: AppContext, function: str, *, job_id: str, job_try: int, kwargs: dict[str, Any]
) -> tracing.JobSpan | None:
    """Count the job in progress and open its span; takes the trace context out of `kwargs`."""
    if app.metrics is not None:
        app.metrics.job_started()
    carrier = kwargs.pop(tracing.TRACE_KWARG, None)
    return tracing.start_job(function, job_id=job_id, job_try=job_try, carrier=carrier)


def _observe_end(
    app: AppContext,
    function: str,
    span: tracing.JobSpan | None,
    *,
    status: str,
    fields: dict[str, Any],
    started: float,
) -> None:
    """The canonical line, the job's metrics and the end of its span: once per run.

    Called from execute's `finally`, where sys.exc_info() is the exception leaving the job (the
    one arq records); its level depends on it.
    """
    duration_s = time.perf_counter() - started
    fields.update(status=status, duration_ms=round(duration_s * 1000, 1))
    log.log(finished_level(status, sys.exc_info()[1]), "job.finished", **fields)
    if app.metrics is not None:
        app.metrics.job_finished(function, status=status, duration_s=duration_s, fields=fields)
    tracing.finish_job(span, status=status, fields=fields)


async def _within_timeout(
    spec: JobSpec[Any, ResultT], run: RunHandle, payload: BaseModel
) -> ResultT:
    """Run the job under its own time limit, so an overrun is reported as such.

    arq's own timeout (set a little longer in worker.main) would cancel the job and record a bare
    TimeoutError with no text; this one names the job and the limit, and is never retried.
    """
    deadline = asyncio.timeout(spec.timeout_s)
    try:
        async with deadline:
            return await spec.impl(run, payload)
    except TimeoutError:
        if deadline.expired():
            raise JobTimeout(
                f"{spec.name} did not finish within its {spec.timeout_s:g} s time limit "
                "and was stopped; it is not retried"
            ) from None
        raise


async def execute(
    spec: JobSpec[Any, Any], ctx: dict[str, Any], *args: Any, **kwargs: Any
) -> dict[str, Any]:
    """Run one job with arq's `ctx` and the payload as arq received it."""
    app = app_context(ctx)
    settings = app.settings
    job_id = str(ctx.get("job_id", ""))
    job_try = int(ctx.get("job_try", 1))
    run = RunHandle(app=app, job_id=job_id, job_try=job_try, redis=ctx.get("redis"))
    span = _observe_start(app, spec.name, job_id=job_id, job_try=job_try, kwargs=kwargs)
    started = time.perf_counter()
    status = "failed"
    fields: dict[str, Any] = {}
    with structlog.contextvars.bound_contextvars(
        function=spec.name, job_id=job_id, job_try=job_try
    ):
        try:
            payload = validate_payload(spec.payload, args, kwargs)
            async with _heartbeat(ctx, job_id, settings.requeue_after_s):
                result = await _within_timeout(spec, run, payload)
            status = "complete"
            fields = _counters(result)
            dumped: dict[str, Any] = result.model_dump(mode="json")
            return dumped
        except asyncio.CancelledError:
            # Aborted (`etl cancel`: arq records it cancelled, not retried) or stopped by a
            # shutdown (arq queues it again); either way its transaction has rolled back.
            status = "cancelled"
            fields = dict(run.counters)
            raise
        except Retry:
            status = "retrying"  # the job asked for it itself; arq defers it as asked
            raise
        except Exception as exc:
            fields = {
                "error": describe(exc),
                "error_type": type(exc).__name__,
                "max_tries": settings.max_tries,
                **run.counters,
            }
            if not is_transient(exc):
                if isinstance(exc, EtlError):
                    raise
                log.exception("job.crashed")
                # What `etl failed` shows: one line naming the driver's error, rather than
                # SQLAlchemy's text with the statement and its row data over several lines.
                raise UnexpectedError(describe(exc)) from exc
            if job_try >= settings.max_tries:
                fields["error"] = f"gave up after {job_try} tries: {describe(exc)}"
                raise TransientError(fields["error"]) from exc
            status = "retrying"
            delay = backoff_delay(job_try, base_s=settings.retry_base_s, cap_s=settings.retry_cap_s)
            fields["retry_in_s"] = round(delay, 2)
            raise Retry(defer=delay) from exc
        finally:
            _observe_end(app, spec.name, span, status=status, fields=fields, started=started)
