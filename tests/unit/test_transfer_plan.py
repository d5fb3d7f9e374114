"""The transfer rules, without a database: every rule, their order, and running balances."""

from __future__ import annotations

import random
from uuid import UUID, uuid4

import pytest

from jobs.models import TransferItem
from jobs.transfers.job import summarise
from jobs.transfers.plan import (
    ALREADY_RECORDED,
    BALANCE_OVERFLOW,
    NOT_POSITIVE,
    REPEATED_IN_BATCH,
    SAME_ACCOUNT,
    UNKNOWN_FROM,
    UNKNOWN_TO,
    BatchState,
    Decision,
    LedgerRow,
    accounts_to_lock,
    plan_batch,
)
from jobs.validation import BIGINT_MAX

ACCOUNTS = [
    (1, 1_000, "EUR"),
    (2, 0, "EUR"),
    (3, 500, "USD"),
    (4, BIGINT_MAX - 10, "EUR"),
]


def item(source: int, target: int, amount: int, transfer_id: UUID | None = None) -> TransferItem:
    return TransferItem(
        id=transfer_id or uuid4(), from_account=source, to_account=target, amount_cents=amount
    )


def decide_one(transfer: TransferItem, recorded: frozenset[UUID] = frozenset()) -> Decision:
    return plan_batch([transfer], accounts=ACCOUNTS, recorded=recorded).decisions[0]


def test_a_valid_transfer_is_applied_and_moves_the_money() -> None:
    transfer = item(1, 2, 300)
    plan = plan_batch([transfer], accounts=ACCOUNTS, recorded=set())
    assert plan.decisions == [Decision("applied")]
    assert plan.deltas == {1: -300, 2: 300}
    assert plan.ledger == [
        LedgerRow(
            id=transfer.id,
            from_account_id=1,
            to_account_id=2,
            amount_cents=300,
            status="applied",
            reason=None,
        )
    ]


def test_the_whole_balance_may_be_sent() -> None:
    assert decide_one(item(1, 2, 1_000)) == Decision("applied")


@pytest.mark.parametrize(
    ("transfer", "reason"),
    [
        (item(1, 2, 0), NOT_POSITIVE),
        (item(1, 2, -5), NOT_POSITIVE),
        (item(1, 2, -(2**63)), NOT_POSITIVE),
        (item(1, 1, 10), SAME_ACCOUNT),
        (item(99, 1, 10), UNKNOWN_FROM),
        (item(1, 99, 10), UNKNOWN_TO),
        (item(98, 99, 10), UNKNOWN_FROM),
        (item(1, 3, 10), "currency mismatch: from_account holds EUR, to_account holds USD"),
        (
            item(1, 2, 1_001),
            "insufficient funds: from_account holds 1000 cents, amount_cents is 1001",
        ),
        (item(2, 1, 1), "insufficient funds: from_account holds 0 cents, amount_cents is 1"),
        (item(1, 4, 11), BALANCE_OVERFLOW),
    ],
)
def test_each_rule_rejects_with_its_reason(transfer: TransferItem, reason: str) -> None:
    plan = plan_batch([transfer], accounts=ACCOUNTS, recorded=set())
    assert plan.decisions == [Decision("rejected", reason)]
    assert plan.deltas == {}
    assert [(row.id, row.status, row.reason) for row in plan.ledger] == [
        (transfer.id, "rejected", reason)
    ]


def test_a_balance_may_reach_the_largest_bigint() -> None:
    assert decide_one(item(1, 4, 10)) == Decision("applied")


@pytest.mark.parametrize(
    ("transfer", "reason"),
    [
        # A non-positive amount is reported before the other faults of the same transfer.
        (item(1, 1, 0), NOT_POSITIVE),
        (item(98, 99, -1), NOT_POSITIVE),
        (item(99, 99, 10), SAME_ACCOUNT),
        (item(99, 3, 5_000), UNKNOWN_FROM),
        (item(3, 99, 5_000), UNKNOWN_TO),
        # Currency before funds: a transfer that could never apply says why.
        (item(3, 1, 5_000), "currency mismatch: from_account holds USD, to_account holds EUR"),
    ],
)
def test_the_first_rule_broken_is_the_reason(transfer: TransferItem, reason: str) -> None:
    assert decide_one(transfer) == Decision("rejected", reason)


def test_an_id_already_in_the_ledger_is_a_duplicate_whatever_it_carries() -> None:
    for transfer in (item(1, 2, 10), item(1, 1, 0), item(99, 98, 5)):
        plan = plan_batch([transfer], accounts=ACCOUNTS, recorded={transfer.id})
        assert plan.decisions == [Decision("duplicate", ALREADY_RECORDED)]
        assert plan.ledger == []
        assert plan.deltas == {}


def test_an_id_repeated_in_the_batch_counts_once_whatever_the_first_outcome() -> None:
    applied, rejected = uuid4(), uuid4()
    transfers = [
        item(1, 2, 100, applied),
        item(1, 2, 100, applied),
        item(1, 2, 0, rejected),
        item(1, 2, 100, rejected),  # valid this time, but its id is taken
    ]
    plan = plan_batch(transfers, accounts=ACCOUNTS, recorded=set())
    assert plan.decisions == [
        Decision("applied"),
        Decision("duplicate", REPEATED_IN_BATCH),
        Decision("rejected", NOT_POSITIVE),
        Decision("duplicate", REPEATED_IN_BATCH),
    ]
    assert plan.deltas == {1: -100, 2: 100}
    assert [(row.id, row.status) for row in plan.ledger] == [
        (applied, "applied"),
        (rejected, "rejected"),
    ]


def test_balances_run_through_the_batch_in_order() -> None:
    transfers = [
        item(2, 1, 1),  # 2 holds nothing yet
        item(1, 2, 600),
        item(1, 2, 600),  # 1 holds 400 now
        item(2, 1, 600),  # 2 holds 600 now
        item(1, 2, 1_000),  # 1 is back to 1000
        item(2, 1, 1_000),
    ]
    plan = plan_batch(transfers, accounts=ACCOUNTS, recorded=set())
    assert [d.status for d in plan.decisions] == [
        "rejected",
        "applied",
        "rejected",
        "applied",
        "applied",
        "applied",
    ]
    assert plan.decisions[2].reason == (
        "insufficient funds: from_account holds 400 cents, amount_cents is 600"
    )
    # Money went round in a circle: no account changed, so nothing needs updating.
    assert plan.deltas == {}
    assert len(plan.ledger) == 6


def test_ledger_rows_keep_input_order_and_skip_duplicates() -> None:
    old = uuid4()
    transfers = [item(1, 2, 5), item(1, 2, 5, old), item(3, 3, 5), item(1, 2, 5)]
    plan = plan_batch(transfers, accounts=ACCOUNTS, recorded={old})
    assert [row.id for row in plan.ledger] == [transfers[0].id, transfers[2].id, transfers[3].id]
    assert [row.status for row in plan.ledger] == ["applied", "rejected", "applied"]
    assert plan.deltas == {1: -10, 2: 10}


def test_state_decides_without_changing_anything_until_settled() -> None:
    state = BatchState(accounts=ACCOUNTS, recorded=set())
    transfer = item(1, 2, 1_000)
    assert state.decide(transfer) == Decision("applied")
    assert state.decide(transfer) == Decision("applied")
    assert state.deltas() == {}
    state.settle(transfer, Decision("applied"))
    assert state.decide(transfer) == Decision("duplicate", REPEATED_IN_BATCH)
    assert state.decide(item(1, 2, 1)).status == "rejected"
    assert state.deltas() == {1: -1_000, 2: 1_000}


def test_an_id_found_recorded_later_is_a_duplicate_and_moves_nothing() -> None:
    state = BatchState(accounts=ACCOUNTS, recorded=set())
    transfer = item(1, 2, 100)
    state.mark_recorded(transfer.id)
    decision = state.decide(transfer)
    assert decision == Decision("duplicate", ALREADY_RECORDED)
    state.settle(transfer, decision)
    assert state.deltas() == {}


def test_a_rejection_settled_by_the_database_moves_nothing() -> None:
    state = BatchState(accounts=ACCOUNTS, recorded=set())
    transfer = item(1, 2, 100)
    state.settle(transfer, Decision("rejected", "refused by the database: some_check"))
    assert state.deltas() == {}
    assert state.decide(transfer) == Decision("duplicate", REPEATED_IN_BATCH)


def test_only_accounts_money_may_move_between_are_locked_in_ascending_order() -> None:
    transfers = [
        item(9, 3, 10),
        item(5, 5, 10),  # same account: rejected whatever the balance
        item(7, 8, 0),  # no money moves
        item(3, 1, -1),
        item(2, 9, 1),
        item(-4, 2, 1),
    ]
    assert accounts_to_lock(transfers) == [-4, 2, 3, 9]
    assert accounts_to_lock([]) == []


def test_random_batches_keep_money_and_never_overdraw() -> None:
    rng = random.Random(20261122)
    for _ in range(200):
        accounts = [
            (account_id, rng.randrange(0, 1_000), rng.choice(["EUR", "EUR", "USD"]))
            for account_id in range(1, rng.randrange(2, 8))
        ]
        balance = {account_id: cents for account_id, cents, _ in accounts}
        currency = {account_id: code for account_id, _, code in accounts}
        ids = [uuid4() for _ in range(30)]
        recorded = set(rng.sample(ids, 3))
        transfers = [
            item(rng.randrange(0, 9), rng.randrange(0, 9), rng.randrange(-50, 600), rng.choice(ids))
            for _ in range(rng.randrange(1, 60))
        ]
        plan = plan_batch(transfers, accounts=accounts, recorded=recorded)

        assert sum(plan.deltas.values()) == 0
        for account_id, delta in plan.deltas.items():
            assert balance[account_id] + delta >= 0
        # Each id is recorded once at most, never when recorded before.
        ledger_ids = [row.id for row in plan.ledger]
        assert len(ledger_ids) == len(set(ledger_ids))
        assert not set(ledger_ids) & recorded
        seen: set[UUID] = set(recorded)
        for transfer, decision in zip(transfers, plan.decisions, strict=True):
            assert (decision.status == "duplicate") == (transfer.id in seen)
            seen.add(transfer.id)
            if decision.status == "applied":
                assert transfer.amount_cents > 0
                assert transfer.from_account != transfer.to_account
                assert currency[transfer.from_account] == currency[transfer.to_account]
        # The net changes are exactly what the applied transfers add up to.
        expected: dict[int, int] = {}
        for row in plan.ledger:
            if row.status == "applied":
                expected[row.from_account_id] = expected.get(row.from_account_id, 0) - (
                    row.amount_cents
                )
                expected[row.to_account_id] = expected.get(row.to_account_id, 0) + row.amount_cents
        assert plan.deltas == {k: v for k, v in expected.items() if v}


def test_stepping_the_state_gives_the_plan() -> None:
    rng = random.Random(7)
    ids = [uuid4() for _ in range(40)]
    transfers = [
        item(rng.randrange(1, 5), rng.randrange(1, 5), rng.randrange(-5, 700), rng.choice(ids))
        for _ in range(300)
    ]
    plan = plan_batch(transfers, accounts=ACCOUNTS, recorded={ids[0]})
    state = BatchState(accounts=ACCOUNTS, recorded={ids[0]})
    stepped = []
    for transfer in transfers:
        decision = state.decide(transfer)
        state.settle(transfer, decision)
        stepped.append(decision)
    assert stepped == plan.decisions
    assert state.deltas() == plan.deltas


def test_the_result_counts_outcomes_and_keeps_input_order() -> None:
    transfers = [item(1, 2, 5), item(1, 2, 0), item(1, 2, 5)]
    decisions = [
        Decision("applied"),
        Decision("rejected", NOT_POSITIVE),
        Decision("duplicate", REPEATED_IN_BATCH),
    ]
    result = summarise(transfers, decisions)
    assert (result.applied, result.rejected, result.duplicate) == (1, 1, 1)
    assert [(r.id, r.status, r.reason) for r in result.results] == [
        (transfers[0].id, "applied", None),
        (transfers[1].id, "rejected", NOT_POSITIVE),
        (transfers[2].id, "duplicate", REPEATED_IN_BATCH),
    ]
