"""Real arq workers in burst mode: they run what is queued, then return."""

from __future__ import annotations

from arq.worker import Worker

from bench.harness import BenchError, stopwatch
from worker.main import build_worker_settings
from worker.settings import Settings

POLL_DELAY_S = 0.0
"""Both workers poll without pause: with arq's 0.5 s default, a burst of instant jobs would measure
the sleep between polls rather than the per-job cost. Production keeps arq's default."""
KEEP_RESULT_S = 60
"""Results expire a minute after the run: a benchmark leaves nothing lasting in a shared Redis."""


def project_worker(settings: Settings, *, queue_name: str, max_jobs: int) -> Worker:
    """The service's own worker (its functions, hooks, serializer and logging)."""
    kwargs = build_worker_settings(
        settings,
        queue_name=queue_name,
        max_jobs=max_jobs,
        keep_result=KEEP_RESULT_S,
        # The nightly entry would run a real export if a run crossed its minute.
        cron_jobs=[],
    )
    return Worker(**kwargs, burst=True, poll_delay=POLL_DELAY_S, handle_signals=False)


async def run_burst(worker: Worker, *, jobs: int) -> float:
    """Seconds for `worker` to run the `jobs` queued jobs; all of them must complete."""
    try:
        with stopwatch() as elapsed:
            await worker.main()
    finally:
        await worker.close()
    complete, failed = worker.jobs_complete, worker.jobs_failed + worker.jobs_retried
    if complete != jobs or failed:
        raise BenchError(
            f"the worker completed {complete} of {jobs} jobs ({failed} failed or retried)"
        )
    return elapsed[0]
