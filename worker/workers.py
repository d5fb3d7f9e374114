"""The worker registry: each worker process keeps a small record of itself in Redis.

`etl:workers:<queue>` is a hash with one field per worker process (a random id), holding JSON:
its host (ETL_WORKER_NAME), pid, queue, start time, the jobs it is running (id and start time),
its max_jobs and its last heartbeat. A worker rewrites its record every BEAT_S seconds, and
sooner (within a second) when a job starts or ends; it removes it when it stops cleanly. A killed
worker's record stays: readers call it stale once its heartbeat is STALE_AFTER_S old and delete
it at DROP_AFTER_S. The hash itself expires DROP_AFTER_S after the last beat of any worker.

The same background task indexes the jobs the worker finished (worker/finished.py), in batches,
so that neither costs a job a round trip to Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from arq.utils import timestamp_ms
from redis.asyncio import Redis

from jobs.errors import describe
from worker.finished import record_finished
from worker.keys import workers_key
from worker.serialization import deserialize, serialize
from worker.settings import Settings

log = structlog.get_logger("worker.workers")

BEAT_S = 5.0
STALE_AFTER_S = 20.0
"""Four missed beats: the worker is gone, or its event loop is blocked."""
DROP_AFTER_S = 600.0
_COALESCE_S = 0.5
"""Job starts and ends within this long of each other are written together."""
_REDIS_TIMEOUT_S = 2.0


def _moment(ms: Any) -> datetime | None:
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """One worker process as its record in Redis describes it."""

    worker_id: str
    host: str
    pid: int
    queue: str
    started_at: datetime
    heartbeat_at: datetime
    running: Mapping[str, datetime]
    """Job id → when it started, for the jobs the worker runs now."""
    max_jobs: int
    stale: bool = False
    """No heartbeat for STALE_AFTER_S: the process was killed, or its loop is stuck."""

    @classmethod
    def parse(cls, worker_id: str, raw: bytes, *, now: datetime) -> WorkerRecord | None:
        try:
            data = deserialize(raw)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        started, beat = _moment(data.get("started_ms")), _moment(data.get("heartbeat_ms"))
        running_raw = data.get("running")
        if started is None or beat is None or not isinstance(running_raw, dict):
            return None
        running = {
            str(job_id): when
            for job_id, ms in running_raw.items()
            if (when := _moment(ms)) is not None
        }
        return cls(
            worker_id=worker_id,
            host=str(data.get("host", "?")),
            pid=int(data["pid"]) if isinstance(data.get("pid"), int) else 0,
            queue=str(data.get("queue", "")),
            started_at=started,
            heartbeat_at=beat,
            running=running,
            max_jobs=int(data["max_jobs"]) if isinstance(data.get("max_jobs"), int) else 0,
            stale=(now - beat).total_seconds() > STALE_AFTER_S,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "host": self.host,
            "pid": self.pid,
            "queue": self.queue,
            "started_at": self.started_at.isoformat(),
            "heartbeat_at": self.heartbeat_at.isoformat(),
            "running": {job_id: when.isoformat() for job_id, when in self.running.items()},
            "max_jobs": self.max_jobs,
            "stale": self.stale,
        }


async def list_workers(
    redis: Redis, *, queue_name: str, now: datetime | None = None
) -> list[WorkerRecord]:
    """The queue's workers, live ones first; records older than DROP_AFTER_S are deleted."""
    now = now or datetime.now(UTC)
    raw: dict[bytes, bytes] = await redis.hgetall(workers_key(queue_name))  # type: ignore[misc]
    records: list[WorkerRecord] = []
    dropped: list[str] = []
    for key, value in raw.items():
        worker_id = key.decode(errors="replace")
        record = WorkerRecord.parse(worker_id, value, now=now)
        if record is None or (now - record.heartbeat_at).total_seconds() > DROP_AFTER_S:
            dropped.append(worker_id)
        else:
            records.append(record)
    if dropped:
        await redis.hdel(workers_key(queue_name), *dropped)  # type: ignore[misc]
    records.sort(key=lambda r: (r.stale, r.host, r.pid, r.worker_id))
    return records


@dataclass
class WorkerPresence:
    """A worker process's record in the registry and its share of the finished-jobs index."""

    redis: Redis
    settings: Settings
    worker_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started_ms: int = field(default_factory=timestamp_ms)
    running: dict[str, int] = field(default_factory=dict)
    finished: list[str] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def record(self) -> bytes:
        return serialize(
            {
                "host": self.settings.worker_name,
                "pid": os.getpid(),
                "queue": self.settings.queue_name,
                "started_ms": self.started_ms,
                "heartbeat_ms": timestamp_ms(),
                "running": self.running,
                "max_jobs": self.settings.max_jobs,
            }
        )

    async def start(self) -> None:
        await self._beat()
        self._task = asyncio.create_task(self._run(), name="etl-worker-presence")

    def job_started(self, job_id: str) -> None:
        self.running[job_id] = timestamp_ms()
        self._wake.set()

    def job_ended(self, job_id: str) -> None:
        self.running.pop(job_id, None)
        self.finished.append(job_id)
        self._wake.set()

    async def stop(self) -> None:
        """Index what is left and remove the record (a clean shutdown)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
            self._task = None
        await self._flush_finished()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_REDIS_TIMEOUT_S):
                await self.redis.hdel(  # type: ignore[misc]
                    workers_key(self.settings.queue_name), self.worker_id
                )

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BEAT_S):
                    await self._wake.wait()
            self._wake.clear()
            await self._flush_finished()
            await self._beat()
            await asyncio.sleep(_COALESCE_S)

    async def _beat(self) -> None:
        key = workers_key(self.settings.queue_name)
        try:
            async with asyncio.timeout(_REDIS_TIMEOUT_S):
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hset(key, self.worker_id, self.record().decode())
                    pipe.expire(key, int(DROP_AFTER_S))
                    await pipe.execute()
        except Exception as exc:  # Redis away for a moment: the next beat tries again
            log.warning("worker.heartbeat_failed", error=describe(exc))

    async def _flush_finished(self) -> None:
        batch, self.finished = self.finished, []
        if not batch:
            return
        try:
            async with asyncio.timeout(_REDIS_TIMEOUT_S):
                await record_finished(
                    self.redis,
                    queue_name=self.settings.queue_name,
                    job_ids=batch,
                    keep_s=self.settings.keep_result_s,
                )
        except Exception as exc:  # the index is best effort: the results themselves are kept
            log.warning("worker.index_failed", error=describe(exc), jobs=len(batch))
