"""The arq worker: `arq worker.main.WorkerSettings` or `etl worker`.

The worker owns the engine: start-up creates it and puts it in arq's ctx, shut-down disposes of it.
`WorkerSettings` is built on first access (PEP 562), so importing this module reads no environment
and starts nothing; `build_worker_settings()` is what tests and the CLI call.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import structlog
from arq.connections import RedisSettings
from arq.cron import CronJob
from arq.worker import Function, func

from jobs.catalogue import FUNCTIONS, INTERNAL, SCHEDULED
from jobs.spec import AnySpec
from worker import embedded, schedules, tracing
from worker.context import CTX_KEY, AppContext
from worker.db import create_engine, create_sessionmaker
from worker.logging import configure_logging, reclaim_arq_logger
from worker.metrics import start_metrics
from worker.redis import redis_settings, sentinel_pool
from worker.runner import arq_function
from worker.serialization import deserialize_job, serialize
from worker.settings import Settings, get_settings
from worker.workers import WorkerPresence

log = structlog.get_logger("worker")

HEALTH_CHECK_INTERVAL_S = 10
# The runner enforces each job's own time limit and reports an overrun by name (JobTimeout); arq's
# timeout, this much later, is only the backstop.
ARQ_TIMEOUT_MARGIN_S = 5.0


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    reclaim_arq_logger(settings.log_level)
    metrics = await start_metrics(settings, ctx.get("redis"))  # first: it may refuse its port
    engine = create_engine(settings)
    traces = tracing.start(engine)
    presence = WorkerPresence(redis=ctx["redis"], settings=settings)
    await presence.start()
    ctx[CTX_KEY] = AppContext(
        settings=settings,
        engine=engine,
        sessionmaker=create_sessionmaker(engine),
        metrics=metrics,
        presence=presence,
    )
    log.info(
        "engine.created",
        database=settings.database_url_safe(),
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
    )
    log.info(
        "worker.started",
        queue=settings.queue_name,
        functions=[j.name for j in (*FUNCTIONS, *SCHEDULED, *INTERNAL)],
        cron=cron_schedule(settings, datetime.now(UTC)),
        metrics=None if metrics is None else f"{settings.metrics_host}:{metrics.port}",
        tracing=traces,
    )
    # What exists now (modules, the engine) lives as long as the process; keeping it out of the
    # collector's generations makes the collections that jobs trigger cheaper (README, "Measured
    # design choices").
    gc.freeze()


async def shutdown(ctx: dict[str, Any]) -> None:
    app = ctx.pop(CTX_KEY, None)
    tracing.stop()
    if isinstance(app, AppContext):
        if app.presence is not None:
            await app.presence.stop()
        if app.metrics is not None:
            await app.metrics.stop()
        await app.engine.dispose()
        log.info("engine.disposed")
    log.info("worker.stopped")


async def on_job_start(ctx: dict[str, Any]) -> None:
    # A fresh context per job: nothing bound by one job can reach the next.
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(job_id=ctx.get("job_id"), job_try=ctx.get("job_try"))
    app = ctx.get(CTX_KEY)
    if isinstance(app, AppContext) and app.presence is not None:
        app.presence.job_started(str(ctx.get("job_id")))


async def after_job_end(ctx: dict[str, Any]) -> None:
    structlog.contextvars.clear_contextvars()
    app = ctx.get(CTX_KEY)
    if isinstance(app, AppContext) and app.presence is not None:
        app.presence.job_ended(str(ctx.get("job_id")))  # indexed if it finished, by its task


def functions(
    settings: Settings, specs: Iterable[AnySpec] = (*FUNCTIONS, *INTERNAL)
) -> list[Function]:
    """arq Functions for `specs` (the catalogue's by default, the jobs that only jobs enqueue
    included), each with its own time limit."""
    return [
        func(
            arq_function(job),
            name=job.name,
            timeout=job.timeout_s + ARQ_TIMEOUT_MARGIN_S,
            max_tries=settings.max_tries,
        )
        for job in specs
    ]


def cron_jobs(settings: Settings) -> list[CronJob]:
    """The scheduled jobs (worker/schedules.py): ETL_SCHEDULES' entries, or the nightly export."""
    return schedules.cron_jobs(
        schedules.load_schedules(settings), settings, timeout_margin_s=ARQ_TIMEOUT_MARGIN_S
    )


def cron_schedule(settings: Settings, now: datetime) -> list[dict[str, str | None]]:
    """Each cron job and its next run after `now` (arq's own reckoning), ISO-8601 in UTC."""
    schedule = []
    for job in cron_jobs(settings):
        job.calculate_next(now.astimezone(UTC))
        when = job.next_run.isoformat().replace("+00:00", "Z") if job.next_run else None
        schedule.append({"function": job.name, "next_run": when})
    return schedule


def build_worker_settings(
    settings: Settings, *, redis: RedisSettings | None = None, **overrides: Any
) -> dict[str, Any]:
    """Keyword arguments for arq's Worker; `settings` must already point at real servers."""
    worker: dict[str, Any] = {
        "functions": functions(settings),
        "cron_jobs": cron_jobs(settings),
        "redis_settings": redis or redis_settings(settings, ride_out_restarts=True),
        "queue_name": settings.queue_name,
        "max_jobs": settings.max_jobs,
        "max_tries": settings.max_tries,
        "keep_result": settings.keep_result_s,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        # ETL_NIGHTLY_AT is UTC; arq reads cron times in the machine's zone unless told.
        "timezone": UTC,
        # On SIGTERM/SIGINT arq stops taking jobs, waits this long for running ones, then cancels
        # them; a cancelled job's transaction rolls back and arq (retry_jobs) queues it again.
        "job_completion_wait": settings.shutdown_grace_s,
        # `etl cancel` of a running job: arq cancels it at its next poll and records it failed
        # with CancelledError (read back as cancelled), not to be retried.
        "allow_abort_jobs": True,
        "job_serializer": serialize,
        "job_deserializer": deserialize_job,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "on_job_start": on_job_start,
        "after_job_end": after_job_end,
        "ctx": {"settings": settings},
    }
    if redis is None and settings.redis_sentinel() is not None:
        # arq's create_pool gives a Sentinel pool no retry: without one the worker would end at
        # the first command the dead primary does not answer. Building it does no I/O.
        worker["redis_pool"] = sentinel_pool(
            settings, ride_out_restarts=True, job_deserializer=deserialize_job
        )
    worker.update(overrides)
    return worker


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        settings = get_settings()
        configure_logging(settings.log_level, settings.resolved_log_format)
        return type("WorkerSettings", (), build_worker_settings(embedded.resolve(settings)))
    raise AttributeError(name)
