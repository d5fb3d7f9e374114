"""Bad `export_dataset` arguments: one clear line naming the field, and nothing written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.jobs import Job
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs import schema as tables
from jobs.errors import InvalidPayload
from jobs.exports.job import export_dataset
from tests.support.worker_helpers import run_burst
from worker.errors import JobError
from worker.runner import execute
from worker.settings import Settings

KNOWN = "known: accounts, customers, transfers"
ISO_8601 = (
    "invalid payload: since: Input should be a valid datetime in ISO-8601 form,"
    " e.g. 2026-11-21T00:00:00Z"
)
SINCE_RANGE = (
    "invalid payload: since: Input should be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
)
FEED_NAME = (
    "invalid payload: incremental: a feed name is 1 to 64 characters from a-z, 0-9, _ and -,"
    " starting with a letter or a digit"
)


def written(export_dir: Path) -> list[str]:
    """Every file and directory under the export dir (which need not exist)."""
    found = []
    for root, dirs, files in os.walk(export_dir):
        found += [os.path.join(root, name) for name in dirs + files]
    return found


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            {"dataset": "customers", "format": "xml"},
            "invalid payload: format: Input should be 'csv' or 'jsonl'",
        ),
        (
            {"dataset": "customers", "since": "yesterday"},
            ISO_8601,
        ),
        (
            {"dataset": "customers", "since": "2026-13-01T00:00:00Z"},
            ISO_8601,
        ),
        (
            {"dataset": "customers", "since": 1700000000},
            "invalid payload: since: Input should be a valid datetime as an ISO-8601 string,"
            " not a number",
        ),
        # Valid ISO-8601 forms, out of range: refused here, not by the driver in the worker.
        ({"dataset": "customers", "since": "0000-01-01T00:00:00Z"}, SINCE_RANGE),
        ({"dataset": "customers", "since": "10000-01-01T00:00:00Z"}, SINCE_RANGE),
        ({"dataset": "customers", "since": "+12026-01-01"}, SINCE_RANGE),
        ({"dataset": "customers", "since": "-0001-01-01"}, SINCE_RANGE),
        ({"dataset": "customers", "since": "0001-01-01T00:00:00+05:00"}, SINCE_RANGE),
        ({"dataset": "customers", "since": "9999-12-31T23:59:59-05:00"}, SINCE_RANGE),
        (
            {"dataset": "customers", "since": "2026-01-01T00:00:00Z", "incremental": "crm"},
            "invalid payload: incremental: cannot be combined with since: an incremental export"
            " starts where its feed's previous export ended; give one or the other",
        ),
        ({"dataset": "customers", "incremental": "CRM"}, FEED_NAME),
        ({"dataset": "customers", "incremental": ""}, FEED_NAME),
        ({"dataset": "customers", "incremental": "-crm"}, FEED_NAME),
        ({"dataset": "customers", "incremental": "crm/../x"}, FEED_NAME),
        ({"dataset": "customers", "incremental": "crm\n"}, FEED_NAME),
        ({"dataset": "customers", "incremental": "a" * 65}, FEED_NAME),
        (
            {"dataset": "customers", "incremental": 7},
            "invalid payload: incremental: Input should be a valid string",
        ),
        (
            {"dataset": "orders"},
            f"invalid payload: dataset: unknown dataset 'orders'; {KNOWN}",
        ),
        (
            {"dataset": "customers; drop table customers; --"},
            "invalid payload: dataset: unknown dataset 'customers; drop table customers; --'; "
            + KNOWN,
        ),
        (
            {"dataset": "../../etc"},
            f"invalid payload: dataset: unknown dataset '../../etc'; {KNOWN}",
        ),
        (
            {"dataset": "customers", "compress": "yes"},
            "invalid payload: compress: Input should be a valid boolean",
        ),
        (
            {"dataset": "customers", "path": "/tmp/x.csv"},
            "invalid payload: path: Extra inputs are not permitted",
        ),
        ({}, "invalid payload: dataset: Field required"),
    ],
)
async def test_bad_payload_is_refused_before_anything_is_written(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine, payload: Any, message: str
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(tables.customers).values(
                external_id="C1",
                email="c1@example.com",
                full_name="One",
                country="GB",
                created_at=func.now(),
            )
        )
    with pytest.raises(InvalidPayload) as caught:
        await execute(export_dataset, ctx, **payload)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)
    assert written(settings.export_dir) == []
    async with engine.connect() as conn:
        assert (
            await conn.execute(select(func.count()).select_from(tables.customers))
        ).scalar() == 1
        assert (
            await conn.execute(select(func.count()).select_from(tables.export_feeds))
        ).scalar() == 0


@pytest.mark.parametrize(
    "since", ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00", "9999-12-31T23:59:59.999999Z"]
)
async def test_the_ends_of_the_since_range_are_accepted(
    ctx: dict[str, Any], engine: AsyncEngine, since: str
) -> None:
    result = await execute(export_dataset, ctx, dataset="customers", since=since)
    assert result["rows"] == 0


async def test_positional_arguments_are_refused(ctx: dict[str, Any], settings: Settings) -> None:
    with pytest.raises(InvalidPayload, match="keyword arguments only"):
        await execute(export_dataset, ctx, "customers")
    assert written(settings.export_dir) == []


async def test_the_worker_fails_a_bad_export_once_without_retrying(
    settings: Settings, redis: ArqRedis, clean_db: None
) -> None:
    job = await redis.enqueue_job(
        "export_dataset", dataset="customers", format="xml", _queue_name=settings.queue_name
    )
    assert job is not None
    worker = await run_burst(settings, redis)
    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (0, 1, 0)
    with pytest.raises(JobError) as caught:
        await Job(
            job.job_id, redis, _queue_name=settings.queue_name, _deserializer=redis.job_deserializer
        ).result(timeout=5)
    assert (caught.value.kind, caught.value.message) == (
        "InvalidPayload",
        "invalid payload: format: Input should be 'csv' or 'jsonl'",
    )
    assert written(settings.export_dir) == []
