"""`python -m tests.support.worker_process`: the worker as production runs it, in its own process.

Settings come from the environment, the worker is built by `build_worker_settings` and run by arq
with its signal handling (SIGTERM: stop taking jobs, wait ETL_SHUTDOWN_GRACE, cancel), the way
`etl worker` does; the fault tests' stand-in jobs are registered beside the service's jobs.
"""

from __future__ import annotations

import asyncio
import contextlib

from arq.worker import Worker

from tests.support.stand_in_jobs import STAND_INS
from worker.logging import configure_logging
from worker.main import build_worker_settings, functions
from worker.settings import Settings

POLL_DELAY_S = 0.1


async def run(settings: Settings) -> None:
    worker = Worker(
        **build_worker_settings(
            settings,
            functions=[*functions(settings), *functions(settings, STAND_INS)],
            poll_delay=POLL_DELAY_S,
        )
    )
    try:
        with contextlib.suppress(asyncio.CancelledError):  # arq's shutdown cancels its main task
            await worker.async_run()
    finally:
        await worker.close()


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.resolved_log_format)
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
