"""Running the real arq worker inside a test."""

from __future__ import annotations

from typing import Any

from arq.connections import ArqRedis
from arq.worker import Worker

from worker.main import build_worker_settings
from worker.settings import Settings


def make_worker(settings: Settings, redis: ArqRedis, **overrides: Any) -> Worker:
    """The project's worker in burst mode: it runs what is queued, then returns."""
    kwargs = build_worker_settings(settings, **overrides)
    kwargs.pop("redis_settings")
    options: dict[str, Any] = {"burst": True, "poll_delay": 0, "handle_signals": False}
    options.update({k: kwargs.pop(k) for k in list(options) if k in kwargs})
    return Worker(redis_pool=redis, **kwargs, **options)


async def run_burst(settings: Settings, redis: ArqRedis, **overrides: Any) -> Worker:
    worker = make_worker(settings, redis, **overrides)
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker
