"""The worker owns one engine, logs its life, and keeps each job's log context to itself."""

from __future__ import annotations

import io
import json
from typing import Any

import structlog
from arq.connections import ArqRedis
from pydantic import BaseModel
from sqlalchemy.engine import make_url

from jobs.models import Payload
from jobs.spec import JobRun, etl_job
from tests.support.worker_helpers import run_burst
from worker.logging import configure_logging
from worker.main import functions
from worker.settings import Settings

ENGINES: list[int] = []


class ProbePayload(Payload):
    leak: str | None = None


class ProbeResult(BaseModel):
    engine_id: int


@etl_job(name="probe", payload=ProbePayload, result=ProbeResult, timeout_s=10)
async def probe(run: JobRun, payload: ProbePayload) -> ProbeResult:
    log = structlog.get_logger("probe")
    if payload.leak:
        # Something a careless job binds and never unbinds.
        structlog.contextvars.bind_contextvars(leak=payload.leak)
    log.info("probe.ran")
    ENGINES.append(id(run.app.engine))
    return ProbeResult(engine_id=id(run.app.engine))


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def _run_probes(
    settings: Settings, redis: ArqRedis, jobs: list[dict[str, Any]]
) -> io.StringIO:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    try:
        for kwargs in jobs:
            await redis.enqueue_job("probe", _queue_name=settings.queue_name, **kwargs)
        fns = [*functions(settings), *functions(settings, [probe])]
        worker = await run_burst(settings, redis, functions=fns, max_jobs=1)
        assert worker.jobs_complete == len(jobs)
    finally:
        configure_logging("INFO", "json")
    return stream


async def test_one_engine_per_worker_not_per_job(
    settings: Settings, redis: ArqRedis, clean_db: None
) -> None:
    ENGINES.clear()
    lines = _lines(await _run_probes(settings, redis, [{}, {}, {}]))
    events = [line["event"] for line in lines]
    assert events.count("engine.created") == 1
    assert events.count("engine.disposed") == 1
    assert events.index("engine.created") < events.index("probe.ran")
    assert events.index("engine.disposed") > len(events) - 4
    assert len(ENGINES) == 3 and len(set(ENGINES)) == 1


async def test_job_context_is_bound_and_does_not_leak(
    settings: Settings, redis: ArqRedis, clean_db: None
) -> None:
    # The second job is deferred a little so it surely runs after the one that binds `leak`.
    lines = _lines(await _run_probes(settings, redis, [{"leak": "first"}, {"_defer_by": 0.05}]))
    ran = [line for line in lines if line["event"] == "probe.ran"]
    finished = [line for line in lines if line["event"] == "job.finished"]
    assert len(ran) == 2 and len(finished) == 2
    assert ran[0]["leak"] == "first"
    assert "leak" not in ran[1]
    assert ran[0]["job_id"] != ran[1]["job_id"]
    for line in ran + finished:
        assert line["function"] == "probe"
        assert line["job_try"] == 1
    assert all(line["status"] == "complete" and line["duration_ms"] >= 0 for line in finished)
    assert finished[0]["engine_id"] == finished[1]["engine_id"]
    # Lines after the jobs carry no job's context.
    stopped = next(line for line in lines if line["event"] == "worker.stopped")
    assert "job_id" not in stopped and "leak" not in stopped


async def test_password_in_urls_never_logged(
    settings: Settings, redis: ArqRedis, clean_db: None
) -> None:
    # Trust auth ignores the password, so the worker really connects with it.
    url = make_url(settings.database_url or "").set(password="s3cret-pw").render_as_string(False)
    with_password = settings.model_copy(update={"database_url": url})
    output = (await _run_probes(with_password, redis, [{}])).getvalue()
    assert "engine.created" in output
    assert "s3cret-pw" not in output
    assert "***" in output
    assert "s3cret-pw" not in repr(with_password)
