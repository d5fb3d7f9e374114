"""The dashboard on a queue of 100,000 jobs: every page renders, and what each page reads from
Redis stays bounded (key lookups, bytes sent back, no SCAN or KEYS), whatever the queue holds.

The Redis is the module's own, so its statistics count this test's commands only.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from arq.connections import ArqRedis
from arq.constants import expires_extra_ms
from starlette.testclient import TestClient

from tests.support.dashboard import private_redis, secret_settings
from tests.support.servers import PrivateRedis
from worker.dashboard.app import create_app
from worker.finished import record_finished
from worker.keys import job_key_prefix, result_key_prefix
from worker.redis import connect
from worker.requests import job_bytes
from worker.serialization import serialize
from worker.settings import Settings

__all__ = ["private_redis"]

QUEUED = 100_000
DEFERRED = 10_000
FAILED = 5_000
PAGES = (
    "/",
    "/queued",
    "/queued?page=3000",
    "/deferred",
    "/failed",
    "/failed?function=import_file&page=50",
    "/finished",
    "/workers",
    "/schedule",
    "/api/queues",
    "/api/failed",
    "/api/throughput",
    "/fragments/running",
    "/fragments/counts",
)
MAX_KEY_LOOKUPS = 1_500
MAX_REPLY_BYTES = 400_000
"""100,000 job ids alone would be 3.2 MB."""


@pytest.fixture
def big_settings(settings: Settings, private_redis: PrivateRedis) -> Settings:
    return secret_settings(settings, private_redis.url)


@pytest.fixture
async def big_queue(big_settings: Settings) -> AsyncIterator[ArqRedis]:
    redis = await connect(big_settings)
    queue = big_settings.queue_name
    now = int(time.time() * 1000)
    record = job_bytes("ping", {"touch_db": False}, enqueue_time_ms=now)
    for start in range(0, QUEUED + DEFERRED, 10_000):
        async with redis.pipeline(transaction=False) as pipe:
            scores = {}
            for i in range(start, start + 10_000):
                job_id = f"big-{i:06d}-{uuid.uuid4().hex[:8]}"
                pipe.set(job_key_prefix + job_id, record, px=expires_extra_ms)
                scores[job_id] = now - QUEUED - 1000 + i if i < QUEUED else now + 3_600_000 + i
            pipe.zadd(queue, scores)
            await pipe.execute()
    failed_ids = [f"failed-{i:05d}" for i in range(FAILED)]
    async with redis.pipeline(transaction=False) as pipe:
        for i, job_id in enumerate(failed_ids):
            result = {
                "t": 1, "f": "import_file", "a": [], "k": {"dataset": "customers", "path": "x"},
                "et": now - 60_000, "s": False, "st": now - 50_000, "ft": now - 40_000 + i,
                "q": queue, "id": job_id,
                "r": {"__error__": "InputFileError", "message": f"x: no such file ({i})"},
            }  # fmt: skip
            pipe.set(result_key_prefix + job_id, serialize(result), px=600_000)
        await pipe.execute()
    await record_finished(redis, queue_name=queue, job_ids=failed_ids, keep_s=600)
    assert await redis.zcard(queue) == QUEUED + DEFERRED
    yield redis
    await redis.flushdb()
    await redis.aclose()


@pytest.fixture
def client(big_settings: Settings, big_queue: ArqRedis) -> Iterator[TestClient]:
    with TestClient(create_app(big_settings), base_url="http://127.0.0.1:8787") as test_client:
        yield test_client


def _stats(server: PrivateRedis) -> tuple[int, int, dict[str, int]]:
    with server.client() as redis:
        stats = redis.info("stats")
        commands = redis.info("commandstats")
    lookups = int(stats["keyspace_hits"]) + int(stats["keyspace_misses"])
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in commands.items()}
    return lookups, int(stats["total_net_output_bytes"]), calls


def test_pages_stay_bounded_on_100k_queued_jobs(
    client: TestClient, private_redis: PrivateRedis
) -> None:
    client.get("/")  # templates compiled, connections open
    measured = []
    for page in PAGES:
        with private_redis.client() as redis:
            redis.config_resetstat()
        started = time.perf_counter()
        answer = client.get(page)
        elapsed_ms = (time.perf_counter() - started) * 1000
        lookups, sent, calls = _stats(private_redis)
        assert answer.status_code == 200, (page, answer.text[:300])
        assert lookups <= MAX_KEY_LOOKUPS, (page, lookups)
        assert sent <= MAX_REPLY_BYTES, (page, sent)
        assert not {"scan", "keys", "smembers", "zrange"} & set(calls), (page, calls)
        measured.append(f"{page}: {elapsed_ms:.0f} ms, {lookups} key lookups, {sent} B read")
    overview = client.get("/").text
    assert "100,000" in overview and "10,000" in overview and "5,000" in overview
    last = client.get("/api/queues?page=4000&size=25").json()["queued"]
    assert (last["total"], len(last["jobs"]), last["has_next"]) == (QUEUED, 25, False)
    assert last["jobs"][-1]["job_id"].startswith(f"big-{QUEUED - 1:06d}-")
    beyond = client.get("/api/queues?page=4001&size=25").json()["queued"]
    assert beyond["jobs"] == []
    print("\n" + "\n".join(measured))  # for information: pytest -s shows them
