"""What the dashboard reads from Redis: counts, pages of ids, job states, workers, the schedule.

Nothing here reads a whole queue. Counts are ZCOUNT / ZCARD; lists are pages of ids taken with
ZRANGEBYSCORE … LIMIT from the queue or from the finished-jobs index (worker/finished.py), and
the jobs of a page are read in one pipelined round trip (worker/status.py). The throughput chart
reads the 60 per-minute rollups of the last hour. So a page costs the same whether 10 or 100,000
jobs wait (tests/dashboard/test_dashboard_scale.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from arq.utils import to_unix_ms
from redis.asyncio import Redis

from jobs.exports.retention import nightly_files
from worker.keys import done_key, failed_key, rate_key
from worker.main import cron_jobs
from worker.schedules import load_schedules
from worker.settings import Settings
from worker.status import JobState, read_states
from worker.workers import WorkerRecord, list_workers

PAGE_SIZE = 25
MAX_PAGE_SIZE = 200
MAX_PAGE = 10_000
"""Deeper pages are refused: ZRANGE's offset is walked, and nobody reads page 10,001."""
NIGHTLY_RUNS = 10
FAMILY_ORDER = ("imports", "upserts", "exports", "transfers", "other")

Waiting = Literal["queued", "deferred"]


@dataclass(frozen=True, slots=True)
class Counts:
    queued: int
    deferred: int
    in_progress: int
    failed: int
    """Failures still kept (ETL_KEEP_RESULT), retried ones included."""
    finished_last_hour: int


@dataclass(frozen=True, slots=True)
class Listing:
    """One page of jobs, and where it sits in the whole list."""

    states: list[JobState]
    page: int
    size: int
    total: int
    has_next: bool


@dataclass(frozen=True, slots=True)
class RunningJob:
    state: JobState
    worker: WorkerRecord | None
    started_at: datetime | None


@dataclass(frozen=True, slots=True)
class ExportFile:
    path: Path
    bytes: int
    modified_at: datetime
    kept: bool


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    """One entry of ETL_SCHEDULES (or the default nightly export) and its next run."""

    name: str
    function: str
    cron: str
    next_run: datetime | None
    keep: int | None
    kwargs: dict[str, object]


@dataclass(frozen=True, slots=True)
class Schedule:
    entries: list[ScheduleEntry]
    nightly_at: str
    next_run: datetime | None
    next_job_id: str | None
    datasets: list[str]
    keep: int
    runs: list[JobState]
    files: dict[str, list[ExportFile]]


@dataclass(frozen=True, slots=True)
class FamilySeries:
    jobs: list[int]
    rows: list[int]
    failed: list[int]

    @property
    def jobs_total(self) -> int:
        return sum(self.jobs)

    @property
    def rows_total(self) -> int:
        return sum(self.rows)


@dataclass(frozen=True, slots=True)
class Throughput:
    minutes: list[datetime]
    families: dict[str, FamilySeries] = field(default_factory=dict)


def clamp_page(page: int, size: int) -> tuple[int, int]:
    return min(max(page, 1), MAX_PAGE), min(max(size, 1), MAX_PAGE_SIZE)


class Queries:
    """Reads for one queue (settings.queue_name) through one Redis pool."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.queue = settings.queue_name

    async def states(self, job_ids: list[str]) -> list[JobState]:
        return await read_states(self.redis, job_ids, queue_name=self.queue, strict=False)

    async def counts(self, *, in_progress: int) -> Counts:
        now = to_unix_ms(datetime.now(UTC))
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcount(self.queue, "-inf", now)
            pipe.zcount(self.queue, f"({now}", "+inf")
            pipe.zcard(failed_key(self.queue))
            pipe.zcount(done_key(self.queue), now - 3_600_000, "+inf")
            due, deferred, failed, recent = await pipe.execute()
        # A running job stays in the queue's sorted set until it finishes.
        return Counts(max(int(due) - in_progress, 0), int(deferred), in_progress, failed, recent)

    async def waiting(self, which: Waiting, *, page: int, size: int) -> Listing:
        page, size = clamp_page(page, size)
        now = to_unix_ms(datetime.now(UTC))
        low, high = ("-inf", now) if which == "queued" else (f"({now}", "+inf")
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(self.queue, low, high, start=(page - 1) * size, num=size + 1)
            pipe.zcount(self.queue, low, high)
            ids, total = await pipe.execute()
        states = await self.states([i.decode() for i in ids[:size]])
        return Listing(states, page, size, int(total), len(ids) > size)

    async def finished(
        self,
        *,
        failed_only: bool,
        function: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        page: int = 1,
        size: int = PAGE_SIZE,
    ) -> Listing:
        """Finished (or only failed) jobs, newest first, from the index."""
        page, size = clamp_page(page, size)
        key = (failed_key if failed_only else done_key)(self.queue, function)
        low = "-inf" if since is None else to_unix_ms(since)
        high = "+inf" if until is None else to_unix_ms(until)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrevrangebyscore(key, high, low, start=(page - 1) * size, num=size + 1)
            pipe.zcount(key, low, high)
            ids, total = await pipe.execute()
        states = await self.states([i.decode() for i in ids[:size]])
        # An id whose result expired since it was indexed is simply not shown.
        found = [s for s in states if s.state != "not_found"]
        return Listing(found, page, size, int(total), len(ids) > size)

    async def workers(self) -> list[WorkerRecord]:
        return await list_workers(self.redis, queue_name=self.queue)

    async def running(self, workers: list[WorkerRecord]) -> list[RunningJob]:
        """The jobs the registered workers say they run, as Redis knows them now."""
        owner = {job_id: w for w in workers for job_id in w.running}
        states = await self.states(list(owner))
        jobs = [
            RunningJob(s, owner[s.job_id], owner[s.job_id].running.get(s.job_id))
            for s in states
            if s.state == "in_progress"
        ]
        epoch = datetime.min.replace(tzinfo=UTC)
        jobs.sort(key=lambda j: j.started_at or epoch)
        return jobs

    async def schedule(self) -> Schedule:
        """The nightly export: its next run, its last runs (kept results), the files kept."""
        settings = self.settings
        now = datetime.now(UTC)
        entries = [
            ScheduleEntry(
                name=entry.name,
                function=entry.function,
                cron=entry.cron_text,
                next_run=entry.next_run(now),
                keep=entry.keep,
                kwargs=dict(entry.kwargs),
            )
            for entry in load_schedules(settings)
        ]
        nightly = [j for j in cron_jobs(settings) if j.name == "nightly_export"]
        job = nightly[0] if nightly else None
        next_run: datetime | None = None
        if job is not None:
            job.calculate_next(now)
            next_run = job.next_run
        name = job.name if job is not None else "nightly_export"
        ids: list[str] = []
        if next_run is not None:
            # arq names a unique cron tick's job `<name>:<tick in ms>`; the schedule is daily.
            days = min(max(settings.keep_result_s // 86_400 + 1, 1), 31)
            ticks = [next_run - timedelta(days=d) for d in range(1, days + 1)]
            ids = [f"{name}:{to_unix_ms(t)}" for t in ticks]
        # Runs at other times (ETL_NIGHTLY_AT changed, a retry) are in the index.
        indexed = await self.redis.zrevrange(done_key(self.queue, name), 0, NIGHTLY_RUNS - 1)
        ids += [i.decode() for i in indexed if i.decode() not in ids]
        runs = [s for s in await self.states(ids) if s.state != "not_found"]
        epoch = datetime.min.replace(tzinfo=UTC)
        runs.sort(key=lambda s: s.finished_at or s.enqueued_at or epoch, reverse=True)
        files = await asyncio.to_thread(self._nightly_files)
        return Schedule(
            entries=entries,
            nightly_at=settings.nightly_at.isoformat(timespec="minutes"),
            next_run=next_run,
            next_job_id=None if next_run is None else f"{name}:{to_unix_ms(next_run)}",
            datasets=settings.nightly_dataset_names,
            keep=settings.export_keep,
            runs=runs[:NIGHTLY_RUNS],
            files=files,
        )

    def _nightly_files(self) -> dict[str, list[ExportFile]]:
        found: dict[str, list[ExportFile]] = {}
        export_dir = self.settings.export_dir
        for dataset in self.settings.nightly_dataset_names:
            if not isinstance(export_dir, Path):  # in a bucket: not listed here
                found[dataset] = []
                continue
            try:
                paths = nightly_files(export_dir / dataset, dataset)
            except OSError:
                paths = []  # no export yet, or the export dir is on another machine
            files = []
            for index, path in enumerate(paths[: self.settings.export_keep + 5]):
                try:
                    stat = path.stat()
                except OSError:
                    continue
                modified = datetime.fromtimestamp(stat.st_mtime, tz=UTC)
                kept = index < self.settings.export_keep
                files.append(ExportFile(path, stat.st_size, modified, kept))
            found[dataset] = files
        return found

    async def throughput(self) -> Throughput:
        """Jobs and rows finished per minute over the last hour, by job family."""
        now_minute = to_unix_ms(datetime.now(UTC)) // 60_000
        minutes = list(range(now_minute - 59, now_minute + 1))
        async with self.redis.pipeline(transaction=False) as pipe:
            for minute in minutes:
                pipe.hgetall(rate_key(self.queue, minute))
            buckets: list[dict[bytes, bytes]] = await pipe.execute()
        series: dict[str, FamilySeries] = {}
        for index, bucket in enumerate(buckets):
            for name, value in bucket.items():
                family, _, what = name.decode().rpartition(":")
                if what not in ("jobs", "rows", "failed") or not value.isdigit():
                    continue
                if family not in series:
                    series[family] = FamilySeries([0] * 60, [0] * 60, [0] * 60)
                getattr(series[family], what)[index] = int(value)
        order = {name: i for i, name in enumerate(FAMILY_ORDER)}
        ordered = dict(sorted(series.items(), key=lambda kv: (order.get(kv[0], 99), kv[0])))
        stamps = [datetime.fromtimestamp(m * 60, tz=UTC) for m in minutes]
        return Throughput(stamps, ordered)
