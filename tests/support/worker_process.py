"""`python -m tests.support.worker_process`: the worker as production runs it, in its own process.

Settings come from the environment, the worker is built by `build_worker_settings` and run by arq
with its signal handling (SIGTERM: stop taking jobs, wait ETL_SHUTDOWN_GRACE, cancel), the way
`etl worker` does; the fault tests' stand-in jobs are registered beside the service's jobs.

`ETL_TEST_KILL_AFTER=transfer_funds[,other]` arms a crash: once a named job's coroutine has
returned (its transaction committed), the process writes the result it would have stored as a
`test.killed_after_job` line and SIGKILLs itself before arq can store it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
from collections.abc import Iterable
from typing import Any

from arq.typing import WorkerCoroutine
from arq.worker import Function, Worker

from tests.support.stand_in_jobs import STAND_INS
from worker.logging import configure_logging
from worker.main import build_worker_settings, functions
from worker.settings import Settings

POLL_DELAY_S = 0.1
KILL_AFTER_ENV = "ETL_TEST_KILL_AFTER"
KILLED_AFTER_EVENT = "test.killed_after_job"


def killing_after(coroutine: WorkerCoroutine, name: str) -> WorkerCoroutine:
    """`coroutine`, but the process dies by SIGKILL as soon as it returns."""

    async def run_then_die(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        result = await coroutine(ctx, *args, **kwargs)
        line = {"event": KILLED_AFTER_EVENT, "function": name, "job_id": ctx.get("job_id")}
        sys.stdout.write(json.dumps({**line, "result": result}, default=str) + "\n")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        return result  # never reached

    return run_then_die


def armed(all_functions: Iterable[Function], kill_after: str) -> list[Function]:
    """The functions, those named in `kill_after` (comma-separated) wrapped by `killing_after`."""
    names = {name.strip() for name in kill_after.split(",") if name.strip()}
    return [
        dataclasses.replace(f, coroutine=killing_after(f.coroutine, f.name))
        if f.name in names
        else f
        for f in all_functions
    ]


async def run(settings: Settings) -> None:
    registered = [*functions(settings), *functions(settings, STAND_INS)]
    kill_after = os.environ.get(KILL_AFTER_ENV, "")
    if kill_after:
        registered = armed(registered, kill_after)
    worker = Worker(
        **build_worker_settings(settings, functions=registered, poll_delay=POLL_DELAY_S)
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
