"""A real arq worker polling in the test's event loop, for jobs that must be caught running."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.worker import Worker

from tests.support.worker_helpers import make_worker
from worker.context import CTX_KEY
from worker.runner import RunHandle
from worker.settings import Settings


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, redis: ArqRedis, **overrides: Any
) -> AsyncIterator[Worker]:
    """The project's worker, not in burst mode, until the block ends (then closed cleanly)."""
    overrides.setdefault("poll_delay", 0.05)
    worker = make_worker(settings, redis, burst=False, **overrides)
    task = asyncio.create_task(worker.main())
    try:
        async with asyncio.timeout(30):
            while CTX_KEY not in worker.ctx and not task.done():  # noqa: ASYNC110
                await asyncio.sleep(0.02)  # until its start-up hook has run
        if task.done():
            await task  # it failed to start: say why
        yield worker
    finally:
        # Let running jobs end (a test that leaves one stalled gets it cancelled here).
        if worker.tasks:
            _, pending = await asyncio.wait(list(worker.tasks.values()), timeout=10)
            for job_task in pending:
                job_task.cancel()
        task.cancel()
        await asyncio.gather(task, *worker.tasks.values(), return_exceptions=True)
        worker.tasks.clear()
        await worker.close()


def stall_on_progress(
    monkeypatch: pytest.MonkeyPatch, *, when: Callable[[dict[str, int]], bool], for_s: float = 60
) -> asyncio.Event:
    """Make a job's run handle stop for `for_s` seconds at the first progress report that
    satisfies `when` (its counters so far): the job is then mid-transaction, and a cancel lands
    there. The event is set when the job has stopped."""
    reached = asyncio.Event()
    real = RunHandle.progress

    async def progress(self: RunHandle, **counters: int) -> None:
        await real(self, **counters)
        if not reached.is_set() and when(self.counters):
            reached.set()
            await asyncio.sleep(for_s)

    monkeypatch.setattr(RunHandle, "progress", progress)
    return reached


async def wait_for_state(
    read: Callable[[], Any], state: str, *, within: float = 15, poll: float = 0.05
) -> Any:
    """Poll `read()` (a coroutine function returning a JobState) until its state is `state`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        current = await read()
        if current.state == state:
            return current
        if loop.time() > deadline:
            raise AssertionError(f"still {current.state}, not {state}, after {within} s")
        await asyncio.sleep(poll)
