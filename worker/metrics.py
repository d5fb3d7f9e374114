"""Prometheus metrics of one worker process, served over HTTP when ETL_METRICS_PORT is set.

The runner reports each job once, when it ends (`job_finished`, plus `job_started` for the
in-progress gauge): a few counter increments on numbers the job already returned, no per-row work.
The queue's depth and the nightly export's last success are read from Redis at start-up and then
every REFRESH_S by a small task. The last success is kept in Redis too (`NIGHTLY_SUCCESS_KEY_PREFIX`
+ queue), so every worker reports it, a restarted one included, whichever worker ran the export.

Each `Metrics` has its own registry: several workers in one process (tests) never share numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any, TypeGuard
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from redis.asyncio import Redis

from jobs.errors import ConfigError, describe
from jobs.exports.nightly import nightly_export
from jobs.transfers.job import transfer_funds
from worker.keys import NIGHTLY_SUCCESS_KEY_PREFIX
from worker.settings import Settings

log = structlog.get_logger("worker.metrics")

REFRESH_S = 10.0
"""How often the queue depth and the nightly export's last success are read from Redis."""

DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 1800, 3600)
"""Seconds: no-op jobs take milliseconds, imports and exports up to their hour-long limit."""

ROW_OUTCOMES: Mapping[str, str] = {
    "inserted": "inserted",
    "updated": "updated",
    "skipped": "skipped",
    "rejected": "rejected",
    "rows": "exported",
}
"""A finished job's result counter -> `outcome` of etl_rows_total (transfers are counted apart)."""

TRANSFER_STATUSES = ("applied", "rejected", "duplicate")


class Metrics:
    """The worker's metrics, in a registry of their own."""

    def __init__(self, *, redis: Redis | None = None, queue_name: str = "") -> None:
        self.registry = CollectorRegistry()
        self._redis = redis
        self._queue_name = queue_name
        self._last_success = 0.0
        """The newest nightly success known here: this worker's or one read from Redis."""
        self._stored_success = 0.0
        self._server: WSGIServer | None = None
        self._running = 0
        # Children by label values: labels() costs several times a dict lookup, on every job.
        self._children: dict[tuple[str, ...], Any] = {}
        self._refresher: asyncio.Task[None] | None = None
        r = self.registry
        self.jobs = Counter(
            "etl_jobs", "Jobs run, by function and outcome.", ["function", "status"], registry=r
        )
        self.duration = Histogram(
            "etl_job_duration_seconds",
            "Time a job took, by function.",
            ["function"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.rows = Counter(
            "etl_rows",
            "Rows handled by complete jobs, by function and outcome.",
            ["function", "outcome"],
            registry=r,
        )
        self.transfers = Counter(
            "etl_transfers", "Transfers decided, by status.", ["status"], registry=r
        )
        self.in_progress = Gauge("etl_jobs_in_progress", "Jobs running now.", registry=r)
        self.in_progress.set_function(lambda: self._running)
        self.queue_depth = Gauge("etl_queue_depth", "Jobs waiting in the queue.", registry=r)
        self.nightly_success = Gauge(
            "etl_nightly_last_success_timestamp_seconds",
            "Unix time the nightly export last completed (0: not since results were kept).",
            registry=r,
        )

    @property
    def port(self) -> int | None:
        """The port /metrics is served on (the real one when ETL_METRICS_PORT is 0)."""
        return None if self._server is None else int(self._server.server_port)

    def job_started(self) -> None:
        self._running += 1

    def job_finished(
        self, function: str, *, status: str, duration_s: float, fields: Mapping[str, Any]
    ) -> None:
        """Count one job's run from its canonical line's fields; rows only for a complete job."""
        self._running -= 1
        self._child(self.jobs, "jobs", function, status).inc()
        self._child(self.duration, "duration", function).observe(duration_s)
        if status != "complete":
            return
        if function == transfer_funds.name:
            for name in TRANSFER_STATUSES:
                if _count(count := fields.get(name)):
                    self._child(self.transfers, "transfers", name).inc(count)
            return
        for key, outcome in ROW_OUTCOMES.items():
            if _count(count := fields.get(key)):
                self._child(self.rows, "rows", function, outcome).inc(count)
        if function == nightly_export.name:
            self._last_success = time.time()
            self.nightly_success.set(self._last_success)

    def _child(self, metric: Any, name: str, *labels: str) -> Any:
        child = self._children.get((name, *labels))
        if child is None:
            child = self._children[(name, *labels)] = metric.labels(*labels)
        return child

    async def refresh(self) -> None:
        """Read the queue's depth; share the nightly export's last success through Redis."""
        if self._redis is None:
            return
        key = NIGHTLY_SUCCESS_KEY_PREFIX + self._queue_name
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self._queue_name)
            pipe.get(key)
            depth, stored = await pipe.execute()
        self.queue_depth.set(depth)
        with contextlib.suppress(TypeError, ValueError):
            self._stored_success = float(stored)
        if self._last_success > self._stored_success:
            await self._redis.set(key, repr(self._last_success))
            self._stored_success = self._last_success
        self._last_success = self._stored_success
        self.nightly_success.set(self._last_success)

    async def _refresh_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception as exc:  # Redis away a moment: the numbers wait, the worker goes on
                log.warning("metrics.refresh_failed", error=describe(exc))

    async def serve(self, *, host: str, port: int, refresh_s: float = REFRESH_S) -> None:
        """Serve /metrics on host:port (a thread of prometheus_client's) and start refreshing."""
        await self.refresh()
        try:
            self._server, _ = await asyncio.to_thread(
                start_http_server, port, addr=host, registry=self.registry
            )
        except OSError as exc:
            raise ConfigError(
                f"ETL_METRICS_PORT: cannot serve metrics on {host}:{port} ({exc.strerror or exc}); "
                "give each worker process a free port, or unset it"
            ) from None
        self._refresher = asyncio.create_task(self._refresh_every(refresh_s))

    async def stop(self) -> None:
        """Stop refreshing (after a last refresh, to share a new nightly success) and serving."""
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.wait({self._refresher})
            self._refresher = None
            with contextlib.suppress(Exception):
                await self.refresh()
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.shutdown)
            server.server_close()


def _count(value: object) -> TypeGuard[int]:
    """True for a positive count (a result's int field; never a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


async def start_metrics(settings: Settings, redis: Redis | None) -> Metrics | None:
    """The worker's metrics, served on ETL_METRICS_HOST:ETL_METRICS_PORT; None when it is unset."""
    if settings.metrics_port is None:
        return None
    metrics = Metrics(redis=redis, queue_name=settings.queue_name)
    await metrics.serve(host=settings.metrics_host, port=settings.metrics_port)
    log.info("metrics.serving", host=settings.metrics_host, port=metrics.port, path="/metrics")
    return metrics
