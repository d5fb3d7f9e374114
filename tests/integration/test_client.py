"""The app client against the real Redis and the real worker (in-process, burst mode)."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import Job
from arq.worker import func

from jobs.errors import ConfigError, IdempotencyConflict, InvalidPayload, PermanentError
from jobs.models import ExportPayload, ImportFilePayload, TransferPayload
from jobs.ping import PingPayload, PingResult, ping
from tests.support.etl_process import drop_queue
from tests.support.worker_helpers import run_burst
from worker.client import BATCH_SIZE, EtlClient, JobRequest
from worker.errors import CannotRetry, JobFailed, JobNotFound, NotAcknowledged
from worker.keys import PROGRESS_KEY_PREFIX
from worker.serialization import serialize
from worker.settings import Settings
from worker.status import list_failed


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Results of a thousand jobs need not stay a week in the shared Redis.
    return settings.model_copy(update={"keep_result_s": 600})


@pytest.fixture(autouse=True)
async def _queue_dropped_after(settings: Settings, redis: ArqRedis) -> AsyncIterator[None]:
    yield
    await drop_queue(redis, settings.queue_name)


@pytest.fixture
async def client(settings: Settings, redis: ArqRedis) -> AsyncIterator[EtlClient]:
    async with EtlClient.from_redis(redis, settings) as etl:
        yield etl


async def _queued(redis: ArqRedis, settings: Settings) -> int:
    return int(await redis.zcard(settings.queue_name))


async def test_client_opens_from_a_redis_url_and_runs_a_job(
    settings: Settings, redis: ArqRedis, clean_db: None
) -> None:
    assert settings.redis_url is not None
    async with EtlClient(settings, redis_url=settings.redis_url) as etl:
        job = await etl.ping()
        assert job.created
        await run_burst(settings, redis)
        result = await job.result(timeout=5)
    assert result == PingResult(pong=True, database=True)


def test_a_redis_url_the_client_cannot_use_is_refused_without_its_password(
    settings: Settings,
) -> None:
    with pytest.raises(ConfigError, match=r"^REDIS_URL must start with redis://, rediss://"):
        EtlClient(settings, redis_url="http://cache:6379")
    with pytest.raises(ConfigError) as caught:
        EtlClient(settings, redis_url="redis://:hunter2@cache:port/0")
    assert caught.value.message.startswith("REDIS_URL has a port or database number that is not")
    assert "hunter2" not in caught.value.message


async def test_enqueue_takes_a_job_spec_and_returns_its_result_type(
    settings: Settings, redis: ArqRedis, client: EtlClient, clean_db: None
) -> None:
    job = await client.enqueue(ping, PingPayload(touch_db=False))
    by_name = await client.ping({"touch_db": False})
    assert (job.function, job.created, by_name.function) == ("ping", True, "ping")
    await run_burst(settings, redis)
    assert await job.result(timeout=5) == PingResult(pong=True, database=False)
    assert await by_name.result(timeout=5) == PingResult(pong=True, database=False)
    with pytest.raises(InvalidPayload, match=r"^invalid payload: ping takes PingPayload, got Ex"):
        await client.enqueue(ping, ExportPayload(dataset="customers"))  # type: ignore[misc]


async def test_a_bad_payload_fails_in_the_app_and_nothing_reaches_redis(
    settings: Settings, redis: ArqRedis, client: EtlClient
) -> None:
    with pytest.raises(InvalidPayload) as caught:
        await client.import_file({"dataset": "nope", "path": "", "mode": "merge"})
    message = caught.value.message
    assert message.startswith("invalid payload: ")
    assert "dataset: unknown dataset 'nope'; known: accounts, customers, transfers" in message
    assert "path: String should have at least 1 character" in message
    assert "mode: Input should be 'upsert' or 'insert'" in message

    with pytest.raises(InvalidPayload, match=r"import_file takes ImportFilePayload, got Export"):
        await client.import_file(ExportPayload(dataset="customers"))  # type: ignore[arg-type]

    # A model built without validation is checked again.
    sneaky = TransferPayload.model_construct(transfers=[])
    with pytest.raises(InvalidPayload, match=r"transfers: List should have at least 1 item"):
        await client.transfer_funds(sneaky)

    assert await _queued(redis, settings) == 0


async def test_a_second_enqueue_with_the_same_id_returns_the_first_job(
    settings: Settings, redis: ArqRedis, client: EtlClient, clean_db: None
) -> None:
    job_id = f"dedup-{uuid.uuid4().hex}"
    first = await client.ping(PingPayload(touch_db=False), _job_id=job_id)
    second = await client.ping({"touch_db": False}, _job_id=job_id)
    assert (first.job_id, first.created) == (job_id, True)
    assert (second.job_id, second.created) == (job_id, False)
    assert await _queued(redis, settings) == 1

    await run_burst(settings, redis)
    assert await second.result(timeout=5) == PingResult(pong=True, database=False)
    # A finished job's id still deduplicates.
    third = await client.ping({"touch_db": False}, _job_id=job_id)
    assert third.created is False
    assert await _queued(redis, settings) == 0


async def test_a_job_id_held_by_other_arguments_is_a_conflict(
    settings: Settings, redis: ArqRedis, client: EtlClient, clean_db: None
) -> None:
    job_id = f"dedup-{uuid.uuid4().hex}"
    await client.ping(PingPayload(touch_db=True), _job_id=job_id)
    with pytest.raises(IdempotencyConflict) as queued:
        await client.ping({"touch_db": False}, _job_id=job_id)
    assert queued.value.message == (
        f"job id {job_id!r} is already used by ping (queued) with other arguments: "
        '{"touch_db": true}; use a new job id'
    )
    with pytest.raises(IdempotencyConflict, match="already used by ping"):
        await client.export_dataset({"dataset": "customers"}, _job_id=job_id)
    await run_burst(settings, redis)
    with pytest.raises(IdempotencyConflict, match=r"already used by ping \(complete\)"):
        await client.ping({"touch_db": False}, _job_id=job_id)
    assert await _queued(redis, settings) == 0


async def test_a_failed_job_raises_its_error_in_the_app(
    settings: Settings, redis: ArqRedis, client: EtlClient, clean_db: None
) -> None:
    # Enqueued without the client's checks, as a careless app in another language could.
    raw = await redis.enqueue_job("ping", touch_db="maybe", _queue_name=settings.queue_name)
    assert raw is not None
    await run_burst(settings, redis)
    with pytest.raises(JobFailed) as caught:
        await client.job(raw.job_id).result(timeout=5)
    assert caught.value.kind == "InvalidPayload"
    assert caught.value.message.startswith("invalid payload: touch_db: Input should be a valid")
    assert caught.value.tries == 1
    assert caught.value.job_id == raw.job_id

    with pytest.raises(JobNotFound, match="not found"):
        await client.job("no-such-job").result(timeout=1)


async def test_result_times_out_while_nobody_runs_the_job(client: EtlClient) -> None:
    job = await client.ping()
    with pytest.raises(TimeoutError, match=r"still queued after 0.3 s"):
        await job.result(timeout=0.3, poll_delay=0.05)


async def test_status_through_each_state(
    settings: Settings, redis: ArqRedis, client: EtlClient, clean_db: None
) -> None:
    job = await client.ping()
    queued = await job.status()
    assert (queued.state, queued.function, queued.kwargs, queued.tries) == (
        "queued",
        "ping",
        {"touch_db": True},
        0,
    )

    # What a worker writes while it runs the job: the in-progress mark, the run count, progress.
    await redis.set(in_progress_key_prefix + job.job_id, b"1", px=60_000)
    await redis.set("arq:retry:" + job.job_id, b"1", ex=60)
    await redis.set(PROGRESS_KEY_PREFIX + job.job_id, serialize({"rows": 1200}), ex=60)
    running = await job.status()
    assert (running.state, running.tries, running.progress) == ("in_progress", 1, {"rows": 1200})
    await redis.delete(in_progress_key_prefix + job.job_id, "arq:retry:" + job.job_id)

    await run_burst(settings, redis)
    done = await job.status()
    assert (done.state, done.tries, done.result) == (
        "complete",
        1,
        {"pong": True, "database": True},
    )
    assert done.as_json()["result"] == {"pong": True, "database": True}
    assert (await client.status("no-such-job")).state == "not_found"


async def test_batch_enqueue_of_1000_jobs_takes_two_round_trips_and_the_worker_runs_them(
    settings: Settings, redis: ArqRedis, client: EtlClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []
    original = redis.execute_command

    async def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return await original(*args, **kwargs)

    monkeypatch.setattr(redis, "execute_command", counting)
    handles = await client.enqueue_many(PingPayload(touch_db=False) for _ in range(1000))
    monkeypatch.undo()

    assert calls == ["EVAL"] * math.ceil(1000 / BATCH_SIZE)
    assert len({h.job_id for h in handles}) == 1000
    assert all(h.created and h.function == "ping" for h in handles)
    assert await _queued(redis, settings) == 1000
    # arq reads the records as its own.
    info = await Job(
        handles[7].job_id,
        redis,
        _queue_name=settings.queue_name,
        _deserializer=redis.job_deserializer,
    ).info()
    assert info is not None
    assert (info.function, info.args, info.kwargs, info.job_try) == (
        "ping",
        [],
        {"touch_db": False},
        1,
    )
    assert 0 < await redis.pttl(job_key_prefix + handles[0].job_id) <= 86_400_000

    worker = await run_burst(settings, redis)
    assert (worker.jobs_complete, worker.jobs_failed) == (1000, 0)
    assert await handles[-1].result(timeout=5) == PingResult(pong=True, database=False)


async def test_batch_keeps_the_skip_if_the_id_exists_rule(
    settings: Settings, redis: ArqRedis, client: EtlClient
) -> None:
    taken = await client.ping(_job_id=f"taken-{uuid.uuid4().hex}")
    same = f"same-{uuid.uuid4().hex}"
    handles = await client.enqueue_many(
        [
            JobRequest(PingPayload(), job_id=taken.job_id),
            JobRequest(PingPayload(), job_id=same),
            JobRequest(PingPayload(touch_db=True), job_id=same),
            ExportPayload(dataset="customers", format="jsonl"),
        ]
    )
    assert [h.created for h in handles] == [False, True, False, True]
    assert [h.function for h in handles] == ["ping", "ping", "ping", "export_dataset"]
    assert await _queued(redis, settings) == 3
    assert (await client.status(same)).kwargs == {"touch_db": True}


async def test_one_bad_payload_in_a_batch_enqueues_nothing(
    settings: Settings, redis: ArqRedis, client: EtlClient
) -> None:
    good = ImportFilePayload(dataset="customers", path="a.csv")
    bad = ImportFilePayload.model_construct(dataset="customers", path="b.csv", max_reject_ratio=2)
    with pytest.raises(InvalidPayload, match=r"^job 1: invalid payload: max_reject_ratio: Input"):
        await client.enqueue_many([good, bad])
    with pytest.raises(InvalidPayload, match=r"job 0: .*PingResult is not a job payload"):
        await client.enqueue_many([PingResult(pong=True, database=True)])
    assert await _queued(redis, settings) == 0


async def _broken_ping(ctx: dict[str, Any], **kwargs: Any) -> None:
    raise PermanentError("the database was away")


async def test_retry_enqueues_a_failed_job_once_with_its_arguments(
    settings: Settings, redis: ArqRedis, client: EtlClient, clean_db: None
) -> None:
    job = await client.ping({"touch_db": True})
    await run_burst(settings, redis, functions=[func(_broken_ping, name="ping")])
    failed = await list_failed(redis, queue_name=settings.queue_name)
    assert [(f.job_id, f.function, f.kwargs, f.tries) for f in failed] == [
        (job.job_id, "ping", {"touch_db": True}, 1)
    ]
    assert failed[0].error is not None
    assert str(failed[0].error) == "PermanentError: the database was away"

    again = await client.retry(job.job_id)
    assert again.job_id != job.job_id
    with pytest.raises(CannotRetry, match=f"already retried as {again.job_id}"):
        await client.retry(job.job_id)
    assert await list_failed(redis, queue_name=settings.queue_name) == []
    assert (await client.status(job.job_id)).retried_as == again.job_id

    await run_burst(settings, redis)
    assert await again.result(timeout=5) == PingResult(pong=True, database=True)
    with pytest.raises(CannotRetry, match="is complete, not failed"):
        await client.retry(again.job_id)
    with pytest.raises(JobNotFound):
        await client.retry("no-such-job")


async def test_an_enqueue_no_replica_confirms_is_retried_then_reported_with_its_job_ids(
    settings: Settings, redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test Redis has no replica, so `WAIT 1` never gets its confirmation.
    monkeypatch.setattr("worker.failover.RETRY_FOR_S", 1.0)
    waiting = settings.model_copy(update={"redis_wait_replicas": 1, "redis_wait_ms": 50})
    job_id = f"unconfirmed-{uuid.uuid4().hex}"
    async with EtlClient.from_redis(redis, waiting) as etl:
        with pytest.raises(NotAcknowledged) as caught:
            await etl.ping({"touch_db": False}, _job_id=job_id)
    assert caught.value.job_ids == [job_id]
    assert caught.value.message.startswith("enqueue of 1 job(s) not acknowledged within 1 s")
    assert "(WAIT: 0 of 1 replica(s) confirmed)" in caught.value.message
    # The primary has it, unconfirmed: enqueueing it again with its id queues nothing twice.
    async with EtlClient.from_redis(redis, settings) as etl:
        again = await etl.ping({"touch_db": False}, _job_id=job_id)
    assert not again.created
    assert await _queued(redis, settings) == 1
