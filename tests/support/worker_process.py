"""`python -m tests.support.worker_process`: the worker as production runs it, in its own process.

Settings come from the environment, the worker is built by `build_worker_settings` and run by arq
with its signal handling (SIGTERM: stop taking jobs, wait ETL_SHUTDOWN_GRACE, cancel), the way
`etl worker` does; the fault tests' stand-in jobs are registered beside the service's jobs.

`ETL_TEST_KILL_AFTER=transfer_funds[,other]` arms a crash: once a named job's coroutine has
returned (its transaction committed), the process writes the result it would have stored as a
`test.killed_after_job` line and SIGKILLs itself before arq can store it.

`ETL_TEST_KILL_AFTER_GROUP=transfer_funds` arms a crash after a group commit: each named job
writes a `test.job_returned` line with its result when its coroutine returns; once two or more
return in the same pass of the event loop (the jobs of one group commit), the process writes a
`test.killed_after_group` line naming them and SIGKILLs itself, before arq stores any of their
results. Jobs returning alone are let through.
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


KILL_AFTER_GROUP_ENV = "ETL_TEST_KILL_AFTER_GROUP"
RETURNED_EVENT = "test.job_returned"
KILLED_AFTER_GROUP_EVENT = "test.killed_after_group"


def _write_line(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line, default=str) + "\n")
    sys.stdout.flush()


def killing_after_group(coroutine: WorkerCoroutine, name: str) -> WorkerCoroutine:
    """`coroutine`, but the process dies by SIGKILL once two or more runs return in one pass."""
    returned: list[str] = []

    def die_if_grouped() -> None:
        if len(returned) > 1:
            _write_line({"event": KILLED_AFTER_GROUP_EVENT, "function": name, "jobs": returned})
            os.kill(os.getpid(), signal.SIGKILL)
        returned.clear()

    async def run_then_maybe_die(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        result = await coroutine(ctx, *args, **kwargs)
        job_id = str(ctx.get("job_id"))
        _write_line({"event": RETURNED_EVENT, "function": name, "job_id": job_id, "result": result})
        if not returned:
            # After the jobs already woken in this pass (a group's), before arq stores a result:
            # arq's own task resumes only once this coroutine's task has finished.
            asyncio.get_running_loop().call_soon(die_if_grouped)
        returned.append(job_id)
        return result

    return run_then_maybe_die


def armed(
    all_functions: Iterable[Function], kill_after: str, kill_after_group: str = ""
) -> list[Function]:
    """The functions, those named in `kill_after` (comma-separated) wrapped by `killing_after`,
    those named in `kill_after_group` by `killing_after_group`."""
    names = {name.strip() for name in kill_after.split(",") if name.strip()}
    grouped = {name.strip() for name in kill_after_group.split(",") if name.strip()}
    out = []
    for f in all_functions:
        if f.name in names:
            f = dataclasses.replace(f, coroutine=killing_after(f.coroutine, f.name))
        elif f.name in grouped:
            f = dataclasses.replace(f, coroutine=killing_after_group(f.coroutine, f.name))
        out.append(f)
    return out


async def run(settings: Settings) -> None:
    registered = [*functions(settings), *functions(settings, STAND_INS)]
    kill_after = os.environ.get(KILL_AFTER_ENV, "")
    kill_after_group = os.environ.get(KILL_AFTER_GROUP_ENV, "")
    if kill_after or kill_after_group:
        registered = armed(registered, kill_after, kill_after_group)
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
