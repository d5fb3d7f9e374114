"""The fault suite's rig: its private servers, a worker process to kill, a row-count watcher."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from arq.connections import ArqRedis

from tests.support.processes import WORKER_WITH_STAND_INS, WorkerProcess
from tests.support.servers import PrivatePostgres, PrivateRedis
from worker.settings import Settings


@dataclass
class PrivateServers:
    postgres: PrivatePostgres
    redis: PrivateRedis

    @property
    def passwords(self) -> tuple[str, str]:
        return self.postgres.password, self.redis.password


@dataclass
class Rig:
    """One test's view of the private servers: settings, a Redis pool, worker processes."""

    servers: PrivateServers
    settings: Settings
    redis: ArqRedis
    tmp: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def worker_env(self, **overrides: str) -> dict[str, str]:
        env = {
            "DATABASE_URL": self.servers.postgres.url,
            "REDIS_URL": self.servers.redis.url,
            "ETL_QUEUE": self.settings.queue_name,
            "ETL_IMPORT_DIR": str(self.settings.import_dir),
            "ETL_EXPORT_DIR": str(self.settings.export_dir),
            "ETL_STATE_DIR": str(self.tmp / "state"),
            "ETL_REQUEUE_AFTER": str(self.settings.requeue_after_s),
            "ETL_RETRY_BASE": str(self.settings.retry_base_s),
            "ETL_RETRY_CAP": str(self.settings.retry_cap_s),
            "ETL_MAX_TRIES": str(self.settings.max_tries),
            "ETL_SHUTDOWN_GRACE": str(self.settings.shutdown_grace_s),
            "ETL_MAX_JOBS": str(self.settings.max_jobs),
        }
        env.update(overrides)
        return env

    def spawn_worker(
        self, *, command: tuple[str, ...] = WORKER_WITH_STAND_INS, **env: str
    ) -> WorkerProcess:
        log_path = self.tmp / f"worker-{len(self.workers) + 1}.log"
        worker = WorkerProcess(self.worker_env(**env), log_path=log_path, command=command)
        self.workers.append(worker)
        return worker

    async def start_worker(self, **env: str) -> WorkerProcess:
        return await self.spawn_worker(**env).started()

    async def enqueue(self, function: str, **kwargs: object) -> str:
        job = await self.redis.enqueue_job(function, _queue_name=self.settings.queue_name, **kwargs)
        assert job is not None
        return job.job_id

    async def sql(self, query: str, *args: object) -> object:
        """One value, read on a connection of its own (the superuser's, over the socket)."""
        conn = await asyncpg.connect(self.servers.postgres.admin_dsn)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()


class CountWatcher:
    """Counts rows from another connection, over and over, for as long as the test runs."""

    def __init__(self, dsn: str, query: str) -> None:
        self.dsn = dsn
        self.query = query
        self.seen: set[int] = set()
        self.reads = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CountWatcher:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.wait({self._task})

    async def _watch(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            while True:
                self.seen.add(int(await conn.fetchval(self.query)))
                self.reads += 1
                await asyncio.sleep(0.01)
        finally:
            await conn.close()
