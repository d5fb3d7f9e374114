"""Prometheus metrics of a real worker running real jobs, scraped over HTTP from /metrics."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any
from uuid import uuid4

import pytest
from arq.connections import ArqRedis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.errors import ConfigError
from tests.support.worker_helpers import make_worker
from worker.context import CTX_KEY, AppContext
from worker.keys import NIGHTLY_SUCCESS_KEY_PREFIX
from worker.metrics import Metrics
from worker.settings import Settings

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        body: bytes = response.read()
    return body.decode()


def samples(exposition: str) -> Samples:
    """Every sample by (name, sorted labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def by_labels(all_samples: Samples, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    """One metric's samples as {label values in `keys` order: value}."""
    return {
        tuple(dict(labels)[k] for k in keys): value
        for (sample_name, labels), value in all_samples.items()
        if sample_name == name
    }


def transfer(
    source: int, target: int, amount: int, transfer_id: str | None = None
) -> dict[str, Any]:
    return {
        "id": transfer_id or str(uuid4()),
        "from_account": source,
        "to_account": target,
        "amount_cents": amount,
    }


async def enqueue_all(
    redis: ArqRedis, settings: Settings, jobs: Iterable[tuple[str, dict[str, Any]]]
) -> None:
    for function, kwargs in jobs:
        assert await redis.enqueue_job(function, _queue_name=settings.queue_name, **kwargs)


async def test_a_workers_metrics_count_its_jobs_rows_and_transfers(
    settings: Settings, redis: ArqRedis, engine: AsyncEngine, clean_db: None
) -> None:
    settings = settings.model_copy(update={"metrics_port": 0, "nightly_datasets": "accounts"})
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "insert into accounts (id, currency, balance_cents) "
                "values (1, 'EUR', 1000), (2, 'EUR', 0)"
            )
        )
    customer = {"email": "a@example.com", "full_name": "A", "country": "fr"}
    repeated = str(uuid4())
    jobs = [
        (
            "upsert_rows",
            {
                "dataset": "customers",
                "rows": [
                    {**customer, "external_id": "C1"},
                    {**customer, "external_id": "C2"},
                    {**customer, "external_id": "C3", "email": "not an address"},
                ],
            },
        ),
        ("upsert_rows", {"dataset": "orders", "rows": []}),  # invalid payload: fails
        (
            "transfer_funds",
            {
                "transfers": [
                    transfer(1, 2, 100, repeated),  # applied
                    transfer(1, 2, 0),  # rejected: not positive
                    transfer(1, 2, 100, repeated),  # duplicate: repeated in this batch
                ]
            },
        ),
        ("export_dataset", {"dataset": "accounts"}),
        ("ping", {"touch_db": False}),
        ("nightly_export", {}),
    ]
    await enqueue_all(redis, settings, jobs)
    worker = make_worker(settings, redis)
    before = time.time()
    try:
        await worker.main()
        app = worker.ctx[CTX_KEY]
        assert isinstance(app, AppContext) and app.metrics is not None
        port = app.metrics.port
        assert port is not None
        found = samples(await asyncio.to_thread(scrape, port))
    finally:
        await worker.close()
    after = time.time()

    assert by_labels(found, "etl_jobs_total", "function", "status") == {
        ("upsert_rows", "complete"): 1,
        ("upsert_rows", "failed"): 1,
        ("transfer_funds", "complete"): 1,
        ("export_dataset", "complete"): 1,
        ("ping", "complete"): 1,
        ("nightly_export", "complete"): 1,
    }
    assert by_labels(found, "etl_rows_total", "function", "outcome") == {
        ("upsert_rows", "inserted"): 2,
        ("upsert_rows", "rejected"): 1,
        ("export_dataset", "exported"): 2,
        ("nightly_export", "exported"): 2,
    }
    assert by_labels(found, "etl_transfers_total", "status") == {
        ("applied",): 1,
        ("rejected",): 1,
        ("duplicate",): 1,
    }
    assert by_labels(found, "etl_job_duration_seconds_count", "function") == {
        ("upsert_rows",): 2,
        ("transfer_funds",): 1,
        ("export_dataset",): 1,
        ("ping",): 1,
        ("nightly_export",): 1,
    }
    durations = by_labels(found, "etl_job_duration_seconds_sum", "function")
    assert all(0 < seconds < after - before for seconds in durations.values())
    assert found[("etl_jobs_in_progress", ())] == 0
    assert found[("etl_queue_depth", ())] == len(jobs)  # read at start-up, before any job ran
    last_success = found[("etl_nightly_last_success_timestamp_seconds", ())]
    assert before < last_success < after

    # Shut down, the server is gone; the last success was left in Redis for every worker to read.
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(scrape, port)
    stored = await redis.get(NIGHTLY_SUCCESS_KEY_PREFIX + settings.queue_name)
    assert stored is not None and float(stored) == last_success
    restarted = Metrics(redis=redis, queue_name=settings.queue_name)
    await restarted.refresh()
    found = samples((await asyncio.to_thread(lambda: _exposition(restarted))).decode())
    assert found[("etl_nightly_last_success_timestamp_seconds", ())] == last_success
    assert found[("etl_queue_depth", ())] == 0
    await redis.delete(NIGHTLY_SUCCESS_KEY_PREFIX + settings.queue_name)


def _exposition(metrics: Metrics) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry)


async def test_metrics_are_off_unless_a_port_is_set(
    settings: Settings, redis: ArqRedis, clean_db: None
) -> None:
    assert settings.metrics_port is None
    await enqueue_all(redis, settings, [("ping", {"touch_db": False})])
    worker = make_worker(settings, redis)
    try:
        await worker.main()
        app = worker.ctx[CTX_KEY]
        assert isinstance(app, AppContext) and app.metrics is None
    finally:
        await worker.close()
    assert worker.jobs_complete == 1


async def test_a_taken_port_fails_start_up_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as caught:
            await Metrics().serve(host="127.0.0.1", port=port)
    assert caught.value.message == (
        f"ETL_METRICS_PORT: cannot serve metrics on 127.0.0.1:{port} (Address already in use); "
        "give each worker process a free port, or unset it"
    )
