"""Real arq workers in burst mode: they run what is queued, then return.

A burst is timed from the end of the worker's start-up (Redis pool, the service's start-up hook:
engine, logging, and the pool's first connection, as in-process runs have it) to the end of its
last job, so what is measured is the per-job path a running worker takes: polling, the job
record's decoding, the runner (validation, heartbeat, progress, the `job.finished` line), the job
itself and the result's write. Start-up happens once per process, not once per job.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from arq.worker import Worker
from pydantic import BaseModel
from sqlalchemy import text

from bench.harness import BenchError
from worker.client import EtlClient, JobRequest
from worker.context import CTX_KEY, AppContext
from worker.main import build_worker_settings
from worker.redis import connect
from worker.settings import Settings

POLL_DELAY_S = 0.0
"""Both workers poll without pause: with arq's 0.5 s default, a burst of instant jobs would measure
the sleep between polls rather than the per-job cost. Production keeps arq's default."""
KEEP_RESULT_S = 60
"""Results expire a minute after the run: a benchmark leaves nothing lasting in a shared Redis."""
RESULT_WAIT_S = 30.0


def project_worker(
    settings: Settings, *, queue_name: str, max_jobs: int, burst: bool = True
) -> Worker:
    """The service's own worker (its functions, hooks, serializer and logging); in burst mode
    unless asked (a worker that serves until stopped: bench.job_run's `serve`)."""
    # Jobs that enqueue jobs (an export's parts) use the settings' queue: make it this one.
    kwargs = build_worker_settings(
        settings.model_copy(update={"queue_name": queue_name}),
        queue_name=queue_name,
        max_jobs=max_jobs,
        keep_result=KEEP_RESULT_S,
        # The nightly entry would run a real export if a run crossed its minute.
        cron_jobs=[],
    )
    return Worker(**kwargs, burst=burst, poll_delay=POLL_DELAY_S, handle_signals=False)


async def run_burst(worker: Worker, *, jobs: int) -> float:
    """Seconds for `worker` to run the `jobs` queued jobs, from the end of its start-up; all of
    them must complete."""
    ready: list[float] = []
    startup = worker.on_startup

    async def timed_startup(ctx: dict[str, Any]) -> None:
        if startup is not None:
            await startup(ctx)
        app = ctx.get(CTX_KEY)
        if isinstance(app, AppContext):
            # As for in-process runs (BenchContext.reset): the pool's first connection is not a
            # job's cost. A worker that has been running has its connections open.
            async with app.engine.connect() as conn:
                await conn.execute(text("select 1"))
        ready.append(time.perf_counter())

    worker.on_startup = timed_startup
    try:
        await worker.main()
        finished = time.perf_counter()
    finally:
        await worker.close()
    complete, failed = worker.jobs_complete, worker.jobs_failed + worker.jobs_retried
    if complete != jobs or failed:
        raise BenchError(
            f"the worker completed {complete} of {jobs} jobs ({failed} failed or retried)"
        )
    return finished - ready[0]


async def run_via_worker(
    settings: Settings,
    *,
    queue_name: str,
    requests: Sequence[BaseModel | JobRequest],
    max_jobs: int = 1,
) -> tuple[float, list[Any]]:
    """Enqueue `requests` as an app does (EtlClient.enqueue_many), run them through the service's
    worker in burst mode, and read every result back: (seconds of the burst, results).

    Enqueueing and reading results are the app's work and are not timed.
    """
    client_settings = settings.model_copy(update={"queue_name": queue_name})
    pool = await connect(client_settings)
    try:
        client = EtlClient.from_redis(pool, client_settings)
        handles = await client.enqueue_many(requests)
        worker = project_worker(settings, queue_name=queue_name, max_jobs=max_jobs)
        seconds = await run_burst(worker, jobs=len(handles))
        results = [await handle.result(timeout=RESULT_WAIT_S) for handle in handles]
    finally:
        await pool.aclose()
    return seconds, results
