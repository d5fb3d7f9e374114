"""The worker registry (worker/workers.py) and the finished-jobs index (worker/finished.py)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from arq.connections import ArqRedis

from tests.support.etl_process import cli_env, drop_queue, etl, worker_process
from tests.support.live_worker import running_worker, stall_on_progress
from tests.support.worker_helpers import run_burst
from worker.client import EtlClient
from worker.keys import done_key, failed_key, rate_key, workers_key
from worker.settings import Settings
from worker.workers import DROP_AFTER_S, WorkerRecord, list_workers


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"keep_result_s": 600, "worker_name": "registry-test"})


@pytest.fixture(autouse=True)
async def _cleaned_after(settings: Settings, redis: ArqRedis) -> AsyncIterator[None]:
    yield
    await drop_queue(redis, settings.queue_name)
    queue = settings.queue_name
    await redis.delete(workers_key(queue), done_key(queue), failed_key(queue))


def _record(*, heartbeat_s_ago: float, host: str = "gone-host") -> bytes:
    now_ms = int(time.time() * 1000)
    return json.dumps(
        {
            "host": host,
            "pid": 4242,
            "queue": "q",
            "started_ms": now_ms - 3_600_000,
            "heartbeat_ms": now_ms - int(heartbeat_s_ago * 1000),
            "running": {"some-job": now_ms - 60_000},
            "max_jobs": 8,
        }
    ).encode()


async def test_a_worker_registers_shows_its_running_jobs_and_leaves_cleanly(
    settings: Settings, redis: ArqRedis, monkeypatch: pytest.MonkeyPatch, clean_db: None
) -> None:
    stalled = stall_on_progress(monkeypatch, when=lambda c: True, for_s=1.5)
    async with (
        EtlClient.from_redis(redis, settings) as client,
        running_worker(settings, redis),
    ):
        (me,) = await list_workers(redis, queue_name=settings.queue_name)
        assert (me.host, me.pid, me.max_jobs, me.stale) == ("registry-test", os.getpid(), 8, False)
        assert me.running == {}
        job = await client.export_dataset({"dataset": "accounts"})
        await asyncio.wait_for(stalled.wait(), 15)
        # Job starts and ends are written within a second (the job stalls for 1.5 s).
        me = await _until(redis, settings, lambda w: bool(w.running))
        assert list(me.running) == [job.job_id]
        assert abs((datetime.now(UTC) - me.heartbeat_at).total_seconds()) < 3
        await job.result(timeout=15)
        await _until(redis, settings, lambda w: not w.running)
    assert await list_workers(redis, queue_name=settings.queue_name) == []


async def _until(
    redis: ArqRedis, settings: Settings, check: Callable[[WorkerRecord], bool]
) -> WorkerRecord:
    for _ in range(100):
        (me,) = await list_workers(redis, queue_name=settings.queue_name)
        if check(me):
            return me
        await asyncio.sleep(0.05)
    raise AssertionError(f"the worker's record did not change as expected: {me}")


async def test_a_silent_worker_is_stale_then_dropped(settings: Settings, redis: ArqRedis) -> None:
    key = workers_key(settings.queue_name)
    await redis.hset(key, "quiet", _record(heartbeat_s_ago=60))
    await redis.hset(key, "long-gone", _record(heartbeat_s_ago=DROP_AFTER_S + 5))
    await redis.hset(key, "garbage", b"not json")
    (quiet,) = await list_workers(redis, queue_name=settings.queue_name)
    assert (quiet.worker_id, quiet.stale, quiet.host, list(quiet.running)) == (
        "quiet",
        True,
        "gone-host",
        ["some-job"],
    )
    assert await redis.hkeys(key) == [b"quiet"]


async def test_finished_jobs_are_indexed_with_their_rows(
    settings: Settings, redis: ArqRedis, clean_db: None
) -> None:
    (settings.import_dir / "c.csv").write_text(
        "external_id,email,full_name,country\nc1,a@example.com,A,FR\nc2,b@example.com,B,DE\n"
    )
    async with EtlClient.from_redis(redis, settings) as client:
        pings = [await client.ping({"touch_db": False}) for _ in range(3)]
        imported = await client.import_file({"dataset": "customers", "path": "c.csv"})
        missing = await client.import_file({"dataset": "customers", "path": "missing.csv"})
        await run_burst(settings, redis)
    queue = settings.queue_name
    done = {k.decode() for k in await redis.zrange(done_key(queue), 0, -1)}
    assert done == {h.job_id for h in (*pings, imported, missing)}
    assert await redis.zrange(failed_key(queue), 0, -1) == [missing.job_id.encode()]
    assert await redis.zrange(failed_key(queue, "import_file"), 0, -1) == [missing.job_id.encode()]
    assert await redis.zcard(done_key(queue, "ping")) == 3
    minute = int(time.time()) // 60
    rates: dict[bytes, bytes] = {}
    for m in (minute - 1, minute):
        for field, value in (await redis.hgetall(rate_key(queue, m))).items():
            rates[field] = str(int(rates.get(field, b"0")) + int(value)).encode()
    assert rates == {
        b"other:jobs": b"3",
        b"other:rows": b"0",
        b"imports:jobs": b"2",
        b"imports:rows": b"2",
        b"imports:failed": b"1",
    }
    for m in (minute - 1, minute):
        await redis.delete(rate_key(queue, m))


async def test_etl_check_lists_live_and_stale_workers(
    settings: Settings, redis: ArqRedis, tmp_path: Path
) -> None:
    env = cli_env(settings, tmp_path, ETL_WORKER_NAME="check-host")
    await redis.hset(workers_key(settings.queue_name), "old", _record(heartbeat_s_ago=90))
    async with worker_process(env, tmp_path, redis=redis, queue=settings.queue_name) as proc:
        done = await etl("check", env=env, cwd=tmp_path)
        assert done.code == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].startswith(
            f"ok: PostgreSQL and Redis answer; worker on queue {settings.queue_name!r}: "
        )
        assert lines[1].startswith(f"worker check-host pid {proc.pid}: 0/8 jobs running, up since ")
        assert lines[2].startswith("worker gone-host pid 4242: stale, last heartbeat ")
        assert re.search(r"\+00:00 \(\d+ s ago\)$", lines[2])
        assert len(lines) == 3
    # A clean stop removes the worker's own record; the stale one stays until it is dropped.
    assert [w.host for w in await list_workers(redis, queue_name=settings.queue_name)] == [
        "gone-host"
    ]
