from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.jobs import Job
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.errors import InvalidPayload
from jobs.upserts import upsert_rows
from tests.support.import_files import count, rows
from tests.support.worker_helpers import run_burst
from worker.runner import execute
from worker.settings import Settings

CUSTOMERS = "select external_id, email, full_name, country, created_at from customers order by 1"


def customer(i: int, **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "external_id": f"c{i}",
        "email": f"user{i}@example.com",
        "full_name": f"Customer {i}",
        "country": "GB",
        "created_at": "2020-01-01T00:00:00Z",
    }
    row.update(overrides)
    return row


async def upsert(ctx: dict[str, Any], dataset: str, rows_: list[Any]) -> dict[str, Any]:
    result: dict[str, Any] = await execute(upsert_rows, ctx, dataset=dataset, rows=rows_)
    return result


async def test_inserts_updates_and_leaves_unchanged_rows_alone(
    ctx: dict[str, Any], engine: AsyncEngine
) -> None:
    assert await upsert(ctx, "customers", [customer(1), customer(2)]) == {
        "dataset": "customers",
        "inserted": 2,
        "updated": 0,
        "rejected": 0,
        "rejects": [],
    }
    before = await rows(
        engine, "select external_id, updated_at, xmin::text from customers order by 1"
    )
    result = await upsert(
        ctx,
        "customers",
        [customer(1), customer(2, full_name="Renamed"), customer(3, email=" ADA@Example.COM ")],
    )
    assert (result["inserted"], result["updated"]) == (1, 1)
    after = await rows(
        engine, "select external_id, updated_at, xmin::text from customers order by 1"
    )
    assert after[0] == before[0]  # c1 was not rewritten
    assert after[1] != before[1]
    assert await rows(engine, CUSTOMERS) == [
        ("c1", "user1@example.com", "Customer 1", "GB", datetime(2020, 1, 1, tzinfo=UTC)),
        ("c2", "user2@example.com", "Renamed", "GB", datetime(2020, 1, 1, tzinfo=UTC)),
        ("c3", "ada@example.com", "Customer 3", "GB", datetime(2020, 1, 1, tzinfo=UTC)),
    ]


async def test_invalid_rows_are_reported_by_index_and_not_written(
    ctx: dict[str, Any], engine: AsyncEngine
) -> None:
    result = await upsert(
        ctx,
        "customers",
        [
            customer(1),
            customer(2, email="nope"),
            customer(3, country="GBR"),
            customer(4, phone="555"),
            customer(5, external_id=5),
            customer(6),
        ],
    )
    assert result == {
        "dataset": "customers",
        "inserted": 2,
        "updated": 0,
        "rejected": 4,
        "rejects": [
            {"index": 1, "reason": "email: must hold exactly one @ with a name before it"},
            {"index": 2, "reason": "country: must be 2 ASCII letters"},
            {
                "index": 3,
                "reason": "'phone': unknown field; customers rows take external_id, email, "
                "full_name, country, created_at",
            },
            {"index": 4, "reason": "external_id: must be text, got an integer"},
        ],
    }
    assert [r[0] for r in await rows(engine, CUSTOMERS)] == ["c1", "c6"]


async def test_a_lone_surrogate_is_a_reject_and_the_other_rows_are_written(
    ctx: dict[str, Any], engine: AsyncEngine
) -> None:
    """ "\ud800" is valid JSON and a valid str but not UTF-8: a reject, not a failed statement."""
    result = await upsert(
        ctx,
        "customers",
        [
            customer(1),
            customer(2, email="ada\ud800@example.com"),
            customer(3),
            customer(4, full_name="Ada \udc80"),
            customer(5, external_id="c5\udfff"),
            {**customer(6), "\ud800": "x"},
            customer(7, full_name="Zoë \U0001f600"),
        ],
    )
    assert result == {
        "dataset": "customers",
        "inserted": 3,
        "updated": 0,
        "rejected": 4,
        "rejects": [
            {"index": 1, "reason": "email: not valid text (lone surrogate)"},
            {"index": 3, "reason": "full_name: not valid text (lone surrogate)"},
            {"index": 4, "reason": "external_id: not valid text (lone surrogate)"},
            {
                "index": 5,
                "reason": "'\\ud800': unknown field; customers rows take external_id, email, "
                "full_name, country, created_at",
            },
        ],
    }
    assert [(r[0], r[2]) for r in await rows(engine, CUSTOMERS)] == [
        ("c1", "Customer 1"),
        ("c3", "Customer 3"),
        ("c7", "Zoë \U0001f600"),
    ]


async def test_a_lone_surrogate_in_an_account_owner_is_a_reject(
    ctx: dict[str, Any], engine: AsyncEngine
) -> None:
    """The owner is looked up before the write: that query must not see the surrogate either."""
    await upsert(ctx, "customers", [customer(1)])
    result = await upsert(
        ctx,
        "accounts",
        [
            {"id": 1, "customer_external_id": "c1\ud800", "currency": "EUR", "balance_cents": 1},
            {"id": 2, "customer_external_id": "c1", "currency": "EUR", "balance_cents": 2},
        ],
    )
    assert result["rejects"] == [
        {"index": 0, "reason": "customer_external_id: not valid text (lone surrogate)"}
    ]
    assert (result["inserted"], result["rejected"]) == (1, 1)
    assert await rows(engine, "select id, customer_external_id from accounts") == [(2, "c1")]


async def test_an_email_that_grows_past_the_limit_when_lower_cased_is_a_reject(
    ctx: dict[str, Any], engine: AsyncEngine
) -> None:
    """'İ'.lower() is two code points: 162 characters as sent would be 312 as stored."""
    email = "İ" * 150 + "@example.com"
    assert (len(email), len(email.lower())) == (162, 312)
    fits = "İ" * 100 + "a" * 42 + "@example.com"  # 254 once lower-cased: the most there is
    result = await upsert(ctx, "customers", [customer(1, email=email), customer(2, email=fits)])
    assert result["rejects"] == [
        {"index": 0, "reason": "email: longer than 254 characters once lower-cased"}
    ]
    assert (result["inserted"], result["rejected"]) == (1, 1)
    assert await rows(engine, "select external_id, char_length(email) from customers") == [
        ("c2", 254)
    ]


async def test_last_row_for_a_key_wins(ctx: dict[str, Any], engine: AsyncEngine) -> None:
    result = await upsert(
        ctx,
        "customers",
        [
            customer(1, full_name="First"),
            customer(2),
            customer(1, full_name="Second"),
            customer(1, full_name="Broken", country=""),
        ],
    )
    assert (result["inserted"], result["updated"], result["rejected"]) == (2, 0, 1)
    assert [r[2] for r in await rows(engine, CUSTOMERS)] == ["Second", "Customer 2"]


async def test_created_at_left_out_is_now_for_new_rows_and_kept_for_stored_ones(
    ctx: dict[str, Any], engine: AsyncEngine
) -> None:
    await upsert(ctx, "customers", [customer(1, created_at="2001-01-01")])
    row1 = customer(1, full_name="Renamed")
    del row1["created_at"]
    result = await upsert(ctx, "customers", [row1, customer(2, created_at=None), customer(3)])
    assert (result["inserted"], result["updated"]) == (2, 1)
    stored = {r[0]: r for r in await rows(engine, CUSTOMERS)}
    assert stored["c1"][2:] == ("Renamed", "GB", datetime(2001, 1, 1, tzinfo=UTC))
    assert stored["c2"][4] > datetime(2026, 1, 1, tzinfo=UTC)
    assert stored["c3"][4] == datetime(2020, 1, 1, tzinfo=UTC)


async def test_accounts_must_name_an_existing_customer(
    ctx: dict[str, Any], engine: AsyncEngine
) -> None:
    await upsert(ctx, "customers", [customer(1)])
    result = await upsert(
        ctx,
        "accounts",
        [
            {"id": 1, "customer_external_id": "c1", "currency": "eur", "balance_cents": 100},
            {"id": 2, "customer_external_id": "ghost", "currency": "EUR", "balance_cents": 5},
            {"id": "3", "currency": "USD", "balance_cents": "0"},
        ],
    )
    assert result["rejects"] == [
        {"index": 1, "reason": "customer_external_id: no row in customers has this external_id"}
    ]
    assert (result["inserted"], result["rejected"]) == (2, 1)
    assert await rows(
        engine, "select id, customer_external_id, currency, balance_cents from accounts order by id"
    ) == [(1, "c1", "EUR", 100), (3, None, "USD", 0)]


async def test_a_named_customer_cannot_vanish_before_the_upsert_commits(
    ctx: dict[str, Any], engine: AsyncEngine
) -> None:
    """The referenced customers are locked FOR KEY SHARE: a delete waits for the commit."""
    await upsert(ctx, "customers", [customer(1)])
    async with engine.connect() as other:
        await other.execute(text("begin"))
        await other.execute(text("select 1 from customers where external_id = 'c1' for update"))
        job = asyncio.create_task(
            upsert(
                ctx,
                "accounts",
                [{"id": 1, "customer_external_id": "c1", "currency": "EUR", "balance_cents": 1}],
            )
        )
        await asyncio.sleep(0.3)
        assert not job.done()  # waiting for the lock the other session holds
        await other.execute(text("rollback"))
    assert (await job)["inserted"] == 1


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("abc", "balance_cents: must be an integer"),
        (1.5, "balance_cents: must be an integer, got a number with a fraction"),
        (True, "balance_cents: must be an integer, got a boolean"),
        (None, "balance_cents: required"),
        ([1], "balance_cents: must be an integer, got a list"),
        (-1, "balance_cents: must be >= 0"),
        (2**63, "balance_cents: out of range for a 64-bit integer"),
    ],
)
async def test_rows_of_the_wrong_type_are_rejects(
    ctx: dict[str, Any], engine: AsyncEngine, value: Any, reason: str
) -> None:
    result = await upsert(ctx, "accounts", [{"id": 1, "currency": "EUR", "balance_cents": value}])
    assert result["rejects"] == [{"index": 0, "reason": reason}]
    assert await count(engine, "accounts") == 0


async def test_more_than_ten_thousand_rows_is_refused_whole(
    ctx: dict[str, Any], engine: AsyncEngine
) -> None:
    with pytest.raises(InvalidPayload) as caught:
        await upsert(ctx, "customers", [customer(i) for i in range(10_001)])
    assert str(caught.value) == (
        "invalid payload: rows: at most 10000 rows per upsert_rows job, got 10001; "
        "use import_file for larger loads"
    )
    assert await count(engine, "customers") == 0


async def test_ten_thousand_rows_are_fine(ctx: dict[str, Any], engine: AsyncEngine) -> None:
    result = await upsert(ctx, "customers", [customer(i) for i in range(10_000)])
    assert result["inserted"] == 10_000
    assert await count(engine, "customers") == 10_000


async def test_a_lone_surrogate_through_the_real_worker_completes_the_job(
    settings: Settings, redis: ArqRedis, engine: AsyncEngine, clean_db: None
) -> None:
    """The payload travels as JSON ("\\ud800"); the job completes and reports the row."""
    job = await redis.enqueue_job(
        "upsert_rows",
        dataset="customers",
        rows=[customer(1, full_name="\ud800"), customer(2)],
        _queue_name=settings.queue_name,
    )
    assert job is not None
    worker = await run_burst(settings, redis)
    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (1, 0, 0)
    result = await Job(
        job.job_id, redis, _queue_name=settings.queue_name, _deserializer=redis.job_deserializer
    ).result(timeout=5)
    assert result["rejects"] == [
        {"index": 0, "reason": "full_name: not valid text (lone surrogate)"}
    ]
    assert [r[0] for r in await rows(engine, CUSTOMERS)] == ["c2"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"dataset": "customers; drop table customers", "rows": []},
            "invalid payload: dataset: unknown dataset 'customers; drop table customers'; "
            "known: accounts, customers, transfers",
        ),
        (
            {"dataset": "transfers", "rows": []},
            "invalid payload: dataset: 'transfers' cannot be imported or upserted; use one of "
            "accounts, customers",
        ),
        (
            {"dataset": "customers", "rows": [{"external_id": "c1"}, "c2"]},
            "invalid payload: rows.1: Input should be a valid dictionary",
        ),
        ({"dataset": "customers"}, "invalid payload: rows: Field required"),
    ],
)
async def test_bad_payloads_are_refused_whole(
    ctx: dict[str, Any], engine: AsyncEngine, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidPayload) as caught:
        await execute(upsert_rows, ctx, **kwargs)
    assert str(caught.value) == message
    assert await count(engine, "customers") == 0


async def test_empty_payload(ctx: dict[str, Any]) -> None:
    assert await upsert(ctx, "accounts", []) == {
        "dataset": "accounts",
        "inserted": 0,
        "updated": 0,
        "rejected": 0,
        "rejects": [],
    }


async def test_upsert_through_the_real_worker(
    settings: Settings, redis: ArqRedis, engine: AsyncEngine, clean_db: None
) -> None:
    job = await redis.enqueue_job(
        "upsert_rows",
        dataset="customers",
        rows=[customer(1), customer(2, email="bad")],
        _queue_name=settings.queue_name,
    )
    assert job is not None
    worker = await run_burst(settings, redis)
    assert worker.jobs_complete == 1
    result = await Job(
        job.job_id, redis, _queue_name=settings.queue_name, _deserializer=redis.job_deserializer
    ).result(timeout=5)
    assert (result["inserted"], result["rejected"]) == (1, 1)
    assert await count(engine, "customers") == 1
