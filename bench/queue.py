"""Queue: no-op `ping` jobs through the service's worker against a bare arq Worker, and enqueueing
one job at a time against a batch.

Both workers run in burst mode on the same Redis, each on a fresh queue, with the same max_jobs,
poll delay and result lifetime. The service's worker keeps its hooks, JSON serializer and
structlog pipeline; its lines go to the benchmark's log file, so terminal output is not measured.
Enqueueing goes through the service's client (worker.client), as apps do; its batch is one
script call per few hundred jobs.

The worker row's note also gives the latency each job pays on both sides: its duration from
arq's start to its finish (arq records both, in milliseconds), p50 and p99 over all rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis
from arq.constants import result_key_prefix
from arq.jobs import deserialize_result
from arq.worker import Worker, func

from bench.context import BenchContext
from bench.enqueue import enqueue_batch, forget
from bench.harness import BenchError, Measured, Row, Run, compare, stopwatch
from bench.workers import KEEP_RESULT_S, POLL_DELAY_S, project_worker, run_burst
from jobs.ping import PingPayload, ping
from worker.client import EtlClient, JobRequest
from worker.redis import connect, redis_settings


async def _noop(ctx: dict[str, Any], **kwargs: Any) -> None:
    return None


def jobs_for(rows: int) -> int:
    return max(500, rows // 100)


async def job_durations_ms(connecting: Awaitable[ArqRedis], job_ids: Sequence[str]) -> list[float]:
    """How long each job ran, from arq's start to its finish (ms), read from its result."""
    pool = await connecting
    out: list[float] = []
    try:
        for first in range(0, len(job_ids), 1_000):
            keys = [result_key_prefix + job_id for job_id in job_ids[first : first + 1_000]]
            for raw in await pool.mget(keys):
                if raw is not None:
                    result = deserialize_result(raw, deserializer=pool.job_deserializer)
                    out.append((result.finish_time - result.start_time).total_seconds() * 1000)
    finally:
        await pool.aclose()
    return out


def latency_note(durations_ms: Sequence[float]) -> str:
    """`job duration p50 2 ms, p99 9 ms (arq's start to finish, 4,000 jobs)`."""
    if len(durations_ms) < 2:
        return "job duration: no results read"
    cuts = statistics.quantiles(durations_ms, n=100, method="inclusive")
    return (
        f"job duration p50 {cuts[49]:.0f} ms, p99 {cuts[98]:.0f} ms "
        f"(arq's start to finish, {len(durations_ms):,} jobs)"
    )


async def scenarios(bench: BenchContext) -> list[Row]:
    count = jobs_for(bench.rows)
    max_jobs = bench.settings.max_jobs
    ping_kwargs = {"touch_db": False}
    project_ms: list[float] = []
    bare_ms: list[float] = []

    async def project() -> Measured:
        queue = bench.queue_name()
        pool = await connect(bench.settings)
        try:
            ids = await enqueue_batch(
                pool, function=ping.name, kwargs=[ping_kwargs] * count, queue_name=queue
            )
        finally:
            await pool.aclose()
        worker = project_worker(bench.settings, queue_name=queue, max_jobs=max_jobs)
        measured = Measured(seconds=await run_burst(worker, jobs=count), rows=count)
        project_ms.extend(await job_durations_ms(connect(bench.settings), ids))
        return measured

    async def bare() -> Measured:
        queue = bench.queue_name()
        settings = redis_settings(bench.settings)
        pool = await create_pool(settings)
        try:
            ids = await enqueue_batch(
                pool, function="ping", kwargs=[ping_kwargs] * count, queue_name=queue
            )
        finally:
            await pool.aclose()
        worker = Worker(
            functions=[func(_noop, name="ping")],
            redis_settings=settings,
            queue_name=queue,
            max_jobs=max_jobs,
            keep_result=KEEP_RESULT_S,
            burst=True,
            poll_delay=POLL_DELAY_S,
            handle_signals=False,
        )
        measured = Measured(seconds=await run_burst(worker, jobs=count), rows=count)
        bare_ms.extend(await job_durations_ms(create_pool(settings), ids))
        return measured

    one, many = _enqueuers(bench, count)
    worker_row = await compare(
        scenario=f"ping jobs (touch_db=False), project worker max_jobs={max_jobs}",
        rows=count,
        rounds=bench.rounds,
        subject=project,
        baseline_name=f"bare arq Worker, no-op, max_jobs={max_jobs}",
        baseline=bare,
        target=0.9,
        note="both workers in burst mode, timed from the end of their start-up",
    )
    worker_row.note = (
        f"{worker_row.note}; {latency_note(project_ms)}; baseline's {latency_note(bare_ms)}"
    )
    return [
        worker_row,
        await compare(
            scenario="enqueue ping jobs, EtlClient.enqueue_many",
            rows=count,
            rounds=bench.rounds,
            subject=many,
            baseline_name="EtlClient.ping, one at a time",
            baseline=one,
            target=5.0,
        ),
    ]


def _enqueuers(bench: BenchContext, count: int) -> tuple[Run, Run]:
    """(one at a time, batch) through the service's client, as apps enqueue."""

    async def measure(write: Callable[[EtlClient], Awaitable[list[str]]]) -> Measured:
        queue = bench.queue_name()
        pool = await connect(bench.settings)
        try:
            client = EtlClient.from_redis(
                pool, bench.settings.model_copy(update={"queue_name": queue})
            )
            with stopwatch() as elapsed:
                ids = await write(client)
            queued = await pool.zcard(queue)
            await forget(pool, queue_name=queue, job_ids=ids)
        finally:
            await pool.aclose()
        if queued != count:
            raise BenchError(f"{queued} jobs on the queue after enqueueing {count}")
        return Measured(seconds=elapsed[0], rows=count)

    async def one_by_one(client: EtlClient) -> list[str]:
        return [(await client.ping({"touch_db": False})).job_id for _ in range(count)]

    async def batch(client: EtlClient) -> list[str]:
        requests = [JobRequest(PingPayload(touch_db=False)) for _ in range(count)]
        return [handle.job_id for handle in await client.enqueue_many(requests)]

    async def one() -> Measured:
        return await measure(one_by_one)

    async def many() -> Measured:
        return await measure(batch)

    return one, many
