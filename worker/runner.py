"""How every job runs: payload validation, log context, retries, heartbeat, the canonical line.

Jobs are JobSpecs (jobs/spec.py); `arq_function(spec)` is what the worker registers with arq, and
`RunHandle` is the worker's side of the run handle a job receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import sys
import time
import weakref
from collections.abc import Iterator, Sequence
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
from jobs.spec import JobConfig, JobOutcome, JobSpec
from worker import handoff, tracing
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

    async def enqueue(self, function: str, *, job_id: str, **kwargs: Any) -> bool:
        """Another job onto this worker's queue (worker/handoff.py); nothing without Redis."""
        settings = self.app.settings
        return await handoff.enqueue(self.redis, settings, function, job_id=job_id, kwargs=kwargs)

    async def claim(self, name: str, *, owner: str, ttl_s: int) -> bool:
        """A once-only claim in Redis; always granted without Redis."""
        return await handoff.claim(self.redis, self.app.settings, name, owner=owner, ttl_s=ttl_s)

    async def outcomes(self, job_ids: Sequence[str]) -> list[JobOutcome | None]:
        return await handoff.outcomes(self.redis, self.app.settings, job_ids)


def arq_function(spec: JobSpec[Any, Any]) -> WorkerCoroutine:
    """The coroutine arq calls for `spec`: `(ctx, **payload) -> result as a dict`."""

    async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        return await execute(spec, ctx, *args, **kwargs)

    run.__qualname__ = run.__name__ = spec.name
    return cast(WorkerCoroutine, run)


class Heartbeats:
    """Keep arq's in-progress keys of one process's running jobs short-lived.

    arq sets a job's in-progress key for the longest job timeout + 10 s, so a job whose worker
    was killed would wait that long (an hour, for imports) before any worker ran it again. Each
    job's key is cut to its `ttl_s` (ETL_REQUEUE_AFTER) as soon as the job first waits for
    anything, and extended every third of that while the job is alive, which bounds the wait
    whatever the job's timeout.

    No job waits for a beat. A job's first PEXPIRE goes out one pass of the event loop after it
    starts, from a task in the job's own context (so it is in the job's trace), if the job is
    still running: one that held the loop until it ended (a no-op) needs none. The extensions
    of every running job go together, in one pipeline every ttl/3, from one task per process
    that stops when no job runs. PEXPIRE never creates a key: a beat arriving after arq deleted
    the key (the job ended) changes nothing, and one arriving while the same job runs again
    elsewhere only sets the hold that worker keeps.
    """

    def __init__(self, redis: Any) -> None:
        self._redis = weakref.ref(redis)  # the registry is keyed by the pool: don't keep it
        self.loop = asyncio.get_running_loop()
        self._running: dict[str, int] = {}  # in-progress key -> ttl (ms)
        self._first_beats: set[asyncio.Task[None]] = set()  # the loop keeps tasks weakly
        self._wake = asyncio.Event()
        self._extender: asyncio.Task[None] | None = None

    def started(self, key: str, ttl_s: int) -> None:
        self._running[key] = ttl_s * 1000
        self.loop.call_soon(self._first_beat, key)  # in the job's context, copied here

    def ended(self, key: str) -> None:
        self._running.pop(key, None)
        if not self._running:
            self._wake.set()  # lets the extender stop

    def _first_beat(self, key: str) -> None:
        ttl_ms = self._running.get(key)
        if ttl_ms is None:
            return  # the job is over already
        beat = self.loop.create_task(self._beat({key: ttl_ms}))
        self._first_beats.add(beat)
        beat.add_done_callback(self._first_beats.discard)
        if self._extender is None:
            self._wake.clear()
            context = contextvars.Context()  # its beats belong to no single job
            self._extender = self.loop.create_task(self._extend(), context=context)

    async def _extend(self) -> None:
        try:
            while self._running:
                every_s = min(self._running.values()) / 3000
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(every_s):
                        await self._wake.wait()  # set once no job runs
                self._wake.clear()
                if self._running:
                    await self._beat(dict(self._running))
        finally:
            self._extender = None

    async def _beat(self, due: dict[str, int]) -> None:
        redis = self._redis()
        if redis is None:
            return
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for key, ttl_ms in due.items():
                    pipe.pexpire(key, ttl_ms)
                await pipe.execute()
        except Exception as exc:  # Redis away for a moment: the jobs go on, the next beat retries
            log.warning("job.heartbeat_failed", error=describe(exc), jobs=len(due))


_HEARTBEATS: weakref.WeakKeyDictionary[Any, Heartbeats] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _heartbeat(ctx: dict[str, Any], job_id: str, ttl_s: int) -> Iterator[None]:
    """The job's in-progress key kept short-lived while it runs (see Heartbeats)."""
    redis = ctx.get("redis")
    if redis is None or not job_id:
        yield
        return
    beats = _HEARTBEATS.get(redis)
    if beats is None or beats.loop is not asyncio.get_running_loop():
        beats = _HEARTBEATS[redis] = Heartbeats(redis)
    key = in_progress_key_prefix + job_id
    beats.started(key, ttl_s)
    try:
        yield
    finally:
        beats.ended(key)


def _counters(result: BaseModel, dumped: dict[str, Any]) -> dict[str, Any]:
    """The result's numbers and short strings (from `dumped`, its JSON form), for the
    canonical line."""
    out: dict[str, Any] = {}
    for key, value in dumped.items():
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
            with _heartbeat(ctx, job_id, settings.requeue_after_s):
                result = await _within_timeout(spec, run, payload)
            status = "complete"
            dumped: dict[str, Any] = result.model_dump(mode="json")
            fields = _counters(result, dumped)
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
