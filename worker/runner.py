"""How every job runs: payload validation, log context, retries, heartbeat, the canonical line.

A job module writes `async def impl(run: JobRun, payload: SomePayload) -> SomeResult` and wraps it
with `@etl_job(...)`; the worker registers the resulting JobSpec's `run` with arq.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import structlog
from arq import Retry
from arq.constants import in_progress_key_prefix
from pydantic import BaseModel, ValidationError

from worker.context import AppContext, app_context
from worker.errors import (
    EtlError,
    InvalidPayload,
    JobFailed,
    JobTimeout,
    TransientError,
    describe,
    is_transient,
)

log = structlog.get_logger("worker.job")

PayloadT = TypeVar("PayloadT", bound=BaseModel)
ResultT = TypeVar("ResultT", bound=BaseModel)

PROGRESS_KEY_PREFIX = "etl:progress:"
_PROGRESS_EVERY_S = 2.0
# Publishing progress must not hold the job up while Redis is away (its client retries for a while).
_PROGRESS_PUBLISH_TIMEOUT_S = 1.0
# Past this many doublings the delay is at its cap anyway; the bound keeps 2**n a small float.
_MAX_DOUBLINGS = 62


def backoff_delay(
    job_try: int, *, base_s: float, cap_s: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds before try `job_try + 1`: exponential from `base_s`, capped, with equal jitter.

    Try 1 failed: between base/2 and base; try 2: base..2*base; ... never more than `cap_s`. Half
    the delay is random so that jobs failed by one outage do not all come back at the same moment.
    """
    doublings = min(max(job_try - 1, 0), _MAX_DOUBLINGS)
    ceiling = min(cap_s, base_s * 2.0**doublings)
    return float(ceiling / 2 + ceiling / 2 * rand())


def payload_error(exc: ValidationError) -> InvalidPayload:
    """One line naming each bad field and why, without echoing the input values."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "payload"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return InvalidPayload("invalid payload: " + "; ".join(parts))


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
class JobRun:
    """One run of one job: the worker's resources plus this run's identity and progress."""

    app: AppContext
    job_id: str
    job_try: int
    redis: Any = None
    counters: dict[str, int] = field(default_factory=dict)
    _last_progress: float = 0.0

    async def progress(self, **counters: int) -> None:
        """Record progress; logged and published to Redis at most every couple of seconds."""
        self.counters.update(counters)
        now = time.monotonic()
        if now - self._last_progress < _PROGRESS_EVERY_S:
            return
        self._last_progress = now
        log.info("job.progress", **self.counters)
        if self.redis is not None:
            from worker.serialization import serialize

            with contextlib.suppress(Exception):  # progress is best effort; the job goes on
                async with asyncio.timeout(_PROGRESS_PUBLISH_TIMEOUT_S):
                    await self.redis.set(
                        PROGRESS_KEY_PREFIX + self.job_id, serialize(self.counters), ex=3600
                    )


@dataclass(frozen=True)
class JobSpec(Generic[PayloadT, ResultT]):
    """A job as the worker registers it and the client enqueues it."""

    name: str
    payload: type[PayloadT]
    result: type[ResultT]
    timeout_s: float
    impl: Callable[[JobRun, PayloadT], Awaitable[ResultT]]

    async def run(self, ctx: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """arq's entry point for this job."""
        return await run_job(self, ctx, args, kwargs)


def etl_job(
    *, name: str, payload: type[PayloadT], result: type[ResultT], timeout_s: float
) -> Callable[[Callable[[JobRun, PayloadT], Awaitable[ResultT]]], JobSpec[PayloadT, ResultT]]:
    def wrap(
        impl: Callable[[JobRun, PayloadT], Awaitable[ResultT]],
    ) -> JobSpec[PayloadT, ResultT]:
        return JobSpec(name=name, payload=payload, result=result, timeout_s=timeout_s, impl=impl)

    return wrap


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
    return out


async def _within_timeout(spec: JobSpec[Any, ResultT], run: JobRun, payload: BaseModel) -> ResultT:
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


async def run_job(
    spec: JobSpec[Any, Any], ctx: dict[str, Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    app = app_context(ctx)
    settings = app.settings
    job_id = str(ctx.get("job_id", ""))
    job_try = int(ctx.get("job_try", 1))
    run = JobRun(app=app, job_id=job_id, job_try=job_try, redis=ctx.get("redis"))
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
            status = "cancelled"
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
                raise JobFailed(describe(exc)) from exc
            if job_try >= settings.max_tries:
                fields["error"] = f"gave up after {job_try} tries: {describe(exc)}"
                raise TransientError(fields["error"]) from exc
            status = "retrying"
            delay = backoff_delay(job_try, base_s=settings.retry_base_s, cap_s=settings.retry_cap_s)
            fields["retry_in_s"] = round(delay, 2)
            raise Retry(defer=delay) from exc
        finally:
            fields.update(
                status=status, duration_ms=round((time.perf_counter() - started) * 1000, 1)
            )
            log.info("job.finished", **fields)
