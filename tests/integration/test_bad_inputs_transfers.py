"""Bad input to `transfer_funds`: a rule broken by one transfer is that transfer's outcome; a
payload of the wrong shape fails the job with one line naming the field, before anything is
written."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.errors import InvalidPayload
from jobs.transfers.job import transfer_funds
from jobs.transfers.plan import (
    NOT_POSITIVE,
    REPEATED_IN_BATCH,
    SAME_ACCOUNT,
    UNKNOWN_FROM,
    UNKNOWN_TO,
)
from jobs.validation import BIGINT_MAX
from tests.integration.test_transfers import balances, connect, ledger, seed_accounts, transfer
from worker.runner import execute


@pytest.fixture
async def observer(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def accounts(engine: AsyncEngine, clean_db: None) -> None:
    await seed_accounts(engine, {1: ("EUR", 100), 2: ("EUR", 0)})


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (transfer(1, 2, 0), NOT_POSITIVE),
        (transfer(1, 2, -1), NOT_POSITIVE),
        (transfer(1, 2, -BIGINT_MAX - 1), NOT_POSITIVE),
        (transfer(1, 1, 10), SAME_ACCOUNT),
        (transfer(404, 2, 10), UNKNOWN_FROM),
        (transfer(1, 404, 10), UNKNOWN_TO),
        (transfer(1, BIGINT_MAX, 10), UNKNOWN_TO),
    ],
)
async def test_a_transfer_breaking_a_rule_is_rejected_and_the_rest_applies(
    ctx: dict[str, Any],
    accounts: None,
    observer: asyncpg.Connection,
    bad: dict[str, Any],
    reason: str,
) -> None:
    good = transfer(1, 2, 30)

    result = await execute(transfer_funds, ctx, transfers=[bad, good])

    assert result == {
        "applied": 1,
        "rejected": 1,
        "duplicate": 0,
        "results": [
            {"id": bad["id"], "status": "rejected", "reason": reason},
            {"id": good["id"], "status": "applied", "reason": None},
        ],
    }
    assert await balances(observer) == {1: 70, 2: 30}
    assert (await ledger(observer))[UUID(bad["id"])] == (
        bad["from_account"],
        bad["to_account"],
        bad["amount_cents"],
        "rejected",
        reason,
    )


async def test_the_same_id_twice_in_a_batch_counts_once(
    ctx: dict[str, Any], accounts: None, observer: asyncpg.Connection
) -> None:
    first = transfer(1, 2, 30)
    again = {**first, "amount_cents": 40}

    result = await execute(transfer_funds, ctx, transfers=[first, again])

    assert [(r["status"], r["reason"]) for r in result["results"]] == [
        ("applied", None),
        ("duplicate", REPEATED_IN_BATCH),
    ]
    assert await balances(observer) == {1: 70, 2: 30}
    assert await ledger(observer) == {UUID(first["id"]): (1, 2, 30, "applied", None)}


def _with(**changes: Any) -> list[dict[str, Any]]:
    """A valid transfer followed by one with `changes`: the bad one is the second (index 1)."""
    return [transfer(1, 2, 10), {**transfer(1, 2, 10), **changes}]


NOT_AN_INTEGER = "Input should be a valid integer"


@pytest.mark.parametrize(
    ("transfers", "message"),
    [
        (_with(amount_cents=1.5), f"transfers.1.amount_cents: {NOT_AN_INTEGER}"),
        (_with(amount_cents=10.0), f"transfers.1.amount_cents: {NOT_AN_INTEGER}"),
        (_with(amount_cents="10"), f"transfers.1.amount_cents: {NOT_AN_INTEGER}"),
        (_with(amount_cents=True), f"transfers.1.amount_cents: {NOT_AN_INTEGER}"),
        (_with(amount_cents=None), f"transfers.1.amount_cents: {NOT_AN_INTEGER}"),
        (
            _with(amount_cents=BIGINT_MAX + 1),
            f"transfers.1.amount_cents: Input should be less than or equal to {BIGINT_MAX}",
        ),
        (
            _with(from_account=-BIGINT_MAX - 2),
            f"transfers.1.from_account: Input should be greater than or equal to {-BIGINT_MAX - 1}",
        ),
        (_with(to_account="2"), f"transfers.1.to_account: {NOT_AN_INTEGER}"),
        (_with(id="not-a-uuid"), "transfers.1.id: Input should be a valid UUID"),
        (_with(id=str(uuid4())[:-1]), "transfers.1.id: Input should be a valid UUID"),
        (_with(id=12345), "transfers.1.id: UUID input should be a string, bytes or UUID object"),
        (_with(note="x"), "transfers.1.note: Extra inputs are not permitted"),
        (
            [{"id": str(uuid4()), "from_account": 1, "to_account": 2}],
            "transfers.0.amount_cents: Field required",
        ),
        ([transfer(1, 2, 10), [1, 2, 10]], "transfers.1: Input should be a valid dictionary"),
        ([transfer(1, 2, 10), "1->2"], "transfers.1: Input should be a valid dictionary"),
        ([], "transfers: List should have at least 1 item after validation, not 0"),
        (transfer(1, 2, 10), "transfers: Input should be a valid list"),
        ("1->2:10", "transfers: Input should be a valid list"),
        (None, "transfers: Input should be a valid list"),
        (
            [transfer(1, 2, 1)] * 10_001,
            "transfers: at most 10000 transfers per job, got 10001; split the batch",
        ),
    ],
)
async def test_a_payload_of_the_wrong_shape_fails_before_anything_is_written(
    ctx: dict[str, Any],
    accounts: None,
    observer: asyncpg.Connection,
    transfers: Any,
    message: str,
) -> None:
    with pytest.raises(InvalidPayload) as failure:
        await execute(transfer_funds, ctx, transfers=transfers)

    text = str(failure.value)
    assert text.startswith(f"invalid payload: {message}")
    assert "\n" not in text
    assert await balances(observer) == {1: 100, 2: 0}
    assert await ledger(observer) == {}


async def test_a_payload_without_transfers_or_with_other_fields_fails(
    ctx: dict[str, Any], accounts: None, observer: asyncpg.Connection
) -> None:
    with pytest.raises(InvalidPayload, match=r"^invalid payload: transfers: Field required$"):
        await execute(transfer_funds, ctx)
    with pytest.raises(
        InvalidPayload, match=r"^invalid payload: dry_run: Extra inputs are not permitted$"
    ):
        await execute(transfer_funds, ctx, transfers=[transfer(1, 2, 1)], dry_run=True)
    with pytest.raises(InvalidPayload, match="keyword arguments only"):
        await execute(transfer_funds, ctx, [transfer(1, 2, 1)])
    assert await ledger(observer) == {}


async def test_ten_thousand_transfers_are_accepted(
    ctx: dict[str, Any], accounts: None, observer: asyncpg.Connection
) -> None:
    result = await execute(
        transfer_funds, ctx, transfers=[transfer(1, 2, 1) for _ in range(10_000)]
    )

    assert (result["applied"], result["rejected"]) == (100, 9_900)
    assert await balances(observer) == {1: 0, 2: 100}
    assert len(await ledger(observer)) == 10_000
