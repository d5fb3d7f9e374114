"""The transfer rules, without a database: every rule, their order, running balances, and what
a transfer the ledger already holds comes to (replay of the same job, later job, reused id)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from uuid import UUID, uuid4

import pytest

from jobs.models import TransferItem, TransferResult
from jobs.transfers.job import summarise
from jobs.transfers.plan import (
    ALREADY_RECORDED,
    BALANCE_OVERFLOW,
    ID_REUSED,
    NOT_POSITIVE,
    REPEATED_IN_BATCH,
    SAME_ACCOUNT,
    UNKNOWN_FROM,
    UNKNOWN_TO,
    AccountRow,
    BatchPlan,
    BatchState,
    Decision,
    LedgerRow,
    Recorded,
    RecordedStatus,
    RecordedTransfer,
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


JOB = "job-this"
EARLIER_JOB = "job-earlier"
NOTHING_RECORDED: dict[UUID, RecordedTransfer] = {}


def item(source: int, target: int, amount: int, transfer_id: UUID | None = None) -> TransferItem:
    return TransferItem(
        id=transfer_id or uuid4(), from_account=source, to_account=target, amount_cents=amount
    )


def plan(
    transfers: Sequence[TransferItem],
    *,
    accounts: Sequence[AccountRow] = ACCOUNTS,
    recorded: Mapping[UUID, RecordedTransfer] = NOTHING_RECORDED,
    job_id: str | None = JOB,
) -> BatchPlan:
    return plan_batch(transfers, accounts=accounts, recorded=recorded, job_id=job_id)


def decide_one(
    transfer: TransferItem, recorded: Mapping[UUID, RecordedTransfer] = NOTHING_RECORDED
) -> Decision:
    return plan([transfer], recorded=recorded).decisions[0]


def row_for(
    transfer: TransferItem,
    status: RecordedStatus = "applied",
    reason: str | None = None,
    *,
    job_id: str | None = EARLIER_JOB,
) -> dict[UUID, RecordedTransfer]:
    """The ledger holding `transfer` as `job_id` recorded it."""
    return {
        transfer.id: RecordedTransfer(
            transfer.from_account,
            transfer.to_account,
            transfer.amount_cents,
            status,
            reason,
            job_id,
        )
    }


def ledger_after(first: BatchPlan, *, job_id: str) -> dict[UUID, RecordedTransfer]:
    """The ledger rows `first` wrote, as a later read returns them."""
    return {
        row.id: RecordedTransfer(
            row.from_account_id, row.to_account_id, row.amount_cents, row.status, row.reason, job_id
        )
        for row in first.ledger
    }


def balances_after(accounts: Sequence[AccountRow], first: BatchPlan) -> list[AccountRow]:
    return [(i, cents + first.deltas.get(i, 0), code) for i, cents, code in accounts]


def test_a_valid_transfer_is_applied_and_moves_the_money() -> None:
    transfer = item(1, 2, 300)
    planned = plan([transfer])
    assert planned.decisions == [Decision("applied")]
    assert planned.deltas == {1: -300, 2: 300}
    assert planned.ledger == [
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
    planned = plan([transfer])
    assert planned.decisions == [Decision("rejected", reason)]
    assert planned.deltas == {}
    assert [(row.id, row.status, row.reason) for row in planned.ledger] == [
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


@pytest.mark.parametrize(
    ("status", "reason"),
    [("applied", None), ("rejected", "insufficient funds: from_account holds 0 cents")],
)
def test_an_id_another_job_recorded_is_a_duplicate_carrying_the_recorded_outcome(
    status: RecordedStatus, reason: str | None
) -> None:
    # Whatever the rules would say now (this one is valid, this one could never apply).
    for transfer in (item(1, 2, 10), item(1, 1, 0), item(99, 98, 5)):
        planned = plan([transfer], recorded=row_for(transfer, status, reason))
        assert planned.decisions == [
            Decision("duplicate", ALREADY_RECORDED, Recorded(status, reason))
        ]
        assert planned.ledger == []
        assert planned.deltas == {}


@pytest.mark.parametrize(
    "changed",
    [item(2, 2, 10), item(1, 3, 10), item(1, 2, 11), item(2, 1, 10)],
    ids=["from_account", "to_account", "amount_cents", "swapped"],
)
@pytest.mark.parametrize("job_id", [EARLIER_JOB, JOB])
def test_an_id_reused_with_different_content_is_rejected_and_writes_nothing(
    changed: TransferItem, job_id: str
) -> None:
    """Even under this job's own id: a run that sends other content is no replay."""
    recorded = item(1, 2, 10)
    reused = changed.model_copy(update={"id": recorded.id})
    planned = plan([reused], recorded=row_for(recorded, "applied", job_id=job_id))
    assert planned.decisions == [Decision("rejected", ID_REUSED, Recorded("applied", None))]
    assert planned.ledger == []
    assert planned.deltas == {}


def test_a_decision_from_the_ledger_writes_nothing() -> None:
    assert Decision("applied").writes
    assert Decision("rejected", NOT_POSITIVE).writes
    assert not Decision("duplicate", REPEATED_IN_BATCH).writes
    assert not Decision("duplicate", ALREADY_RECORDED, Recorded("applied", None)).writes
    assert not Decision("rejected", ID_REUSED, Recorded("applied", None)).writes
    assert not Decision("applied", None, Recorded("applied", None)).writes


def mixed_batch() -> tuple[list[TransferItem], dict[UUID, RecordedTransfer]]:
    """A batch with every kind of outcome, and what an earlier job had recorded before it ran."""
    earlier_applied, earlier_rejected, reused = item(1, 2, 50), item(2, 1, 5), item(1, 2, 7)
    twice = item(1, 2, 100)
    transfers = [
        item(1, 2, 300),  # applied
        item(2, 1, 301),  # rejected: 2 holds 300
        twice,
        item(2, 1, 999, twice.id),  # repeated in this batch, other content
        earlier_applied,  # duplicates of an earlier job's transfers
        earlier_rejected,
        item(1, 2, 8, reused.id),  # the earlier job's id, other amount
        item(1, 1, 0),  # rejected
        item(1, 2, 700),  # rejected: 1 holds 600
        item(2, 1, 400),  # applied
    ]
    recorded = (
        row_for(earlier_applied)
        | row_for(earlier_rejected, "rejected", "insufficient funds: whatever it said")
        | row_for(reused)
    )
    return transfers, recorded


def test_a_replay_of_the_same_job_reports_what_its_first_run_decided() -> None:
    transfers, earlier = mixed_batch()
    first = plan(transfers, recorded=earlier, job_id=JOB)
    assert [d.status for d in first.decisions] == [
        "applied",
        "rejected",
        "applied",
        "duplicate",
        "duplicate",
        "duplicate",
        "rejected",
        "rejected",
        "rejected",
        "applied",
    ]
    assert first.decisions[6] == Decision("rejected", ID_REUSED, Recorded("applied", None))
    # Committed; the worker dies before arq stores the result; the job runs again, same job id,
    # and reads the ledger (the earlier job's rows and its own) and balances as left.
    ledger = earlier | ledger_after(first, job_id=JOB)
    replay = plan(transfers, accounts=balances_after(ACCOUNTS, first), recorded=ledger, job_id=JOB)

    assert [(d.status, d.reason) for d in replay.decisions] == [
        (d.status, d.reason) for d in first.decisions
    ]
    assert summarise(transfers, replay.decisions) == summarise(transfers, first.decisions)
    assert replay.ledger == []
    assert replay.deltas == {}


def test_a_later_job_with_the_same_ids_gets_duplicates_with_the_recorded_outcomes() -> None:
    transfers, earlier = mixed_batch()
    first = plan(transfers, recorded=earlier, job_id=JOB)
    ledger = earlier | ledger_after(first, job_id=JOB)
    later = plan(
        transfers, accounts=balances_after(ACCOUNTS, first), recorded=ledger, job_id="job-later"
    )

    expected = []
    for transfer, decision in zip(transfers, first.decisions, strict=True):
        row = ledger[transfer.id]
        content = (row.from_account_id, row.to_account_id, row.amount_cents)
        if content != (transfer.from_account, transfer.to_account, transfer.amount_cents):
            expected.append(Decision("rejected", ID_REUSED, Recorded(row.status, row.reason)))
        else:
            expected.append(
                Decision("duplicate", ALREADY_RECORDED, Recorded(row.status, row.reason))
            )
        if decision.writes:  # what this job wrote is what the later one is told
            assert (row.status, row.reason) == (decision.status, decision.reason)
    assert later.decisions == expected
    assert later.ledger == []
    assert later.deltas == {}


@pytest.mark.parametrize("job_id", [None, ""])
def test_without_a_job_id_nothing_is_a_replay(job_id: str | None) -> None:
    transfer = item(1, 2, 10)
    planned = plan([transfer], recorded=row_for(transfer, job_id=None), job_id=job_id)
    assert planned.decisions == [Decision("duplicate", ALREADY_RECORDED, Recorded("applied", None))]


def test_an_id_repeated_in_the_batch_counts_once_whatever_the_first_outcome() -> None:
    applied, rejected = uuid4(), uuid4()
    transfers = [
        item(1, 2, 100, applied),
        item(1, 2, 100, applied),
        item(1, 2, 0, rejected),
        item(1, 2, 100, rejected),  # valid this time, but its id is taken
    ]
    planned = plan(transfers)
    assert planned.decisions == [
        Decision("applied"),
        Decision("duplicate", REPEATED_IN_BATCH),
        Decision("rejected", NOT_POSITIVE),
        Decision("duplicate", REPEATED_IN_BATCH),
    ]
    assert planned.deltas == {1: -100, 2: 100}
    assert [(row.id, row.status) for row in planned.ledger] == [
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
    planned = plan(transfers)
    assert [d.status for d in planned.decisions] == [
        "rejected",
        "applied",
        "rejected",
        "applied",
        "applied",
        "applied",
    ]
    assert planned.decisions[2].reason == (
        "insufficient funds: from_account holds 400 cents, amount_cents is 600"
    )
    # Money went round in a circle: no account changed, so nothing needs updating.
    assert planned.deltas == {}
    assert len(planned.ledger) == 6


def test_ledger_rows_keep_input_order_and_skip_what_the_ledger_holds() -> None:
    old, reused = item(1, 2, 5), item(1, 2, 5)
    transfers = [
        item(1, 2, 5),
        old,
        item(3, 3, 5),
        item(1, 2, 6, reused.id),
        item(1, 2, 5),
    ]
    planned = plan(transfers, recorded=row_for(old) | row_for(reused))
    assert [row.id for row in planned.ledger] == [transfers[0].id, transfers[2].id, transfers[4].id]
    assert [row.status for row in planned.ledger] == ["applied", "rejected", "applied"]
    assert planned.deltas == {1: -10, 2: 10}


def test_state_decides_without_changing_anything_until_settled() -> None:
    state = BatchState(accounts=ACCOUNTS, recorded={}, job_id=JOB)
    transfer = item(1, 2, 1_000)
    assert state.decide(transfer) == Decision("applied")
    assert state.decide(transfer) == Decision("applied")
    assert state.deltas() == {}
    state.settle(transfer, Decision("applied"))
    assert state.decide(transfer) == Decision("duplicate", REPEATED_IN_BATCH)
    assert state.decide(item(1, 2, 1)).status == "rejected"
    assert state.deltas() == {1: -1_000, 2: 1_000}


def test_a_row_learnt_later_decides_like_one_read_at_the_start() -> None:
    """The fallback met another job's row on the ledger key: that row now decides."""
    state = BatchState(accounts=ACCOUNTS, recorded={}, job_id=JOB)
    same, reused = item(1, 2, 100), item(1, 2, 100)
    state.learn(row_for(same, "rejected", "some reason") | row_for(reused))
    assert state.decide(same) == Decision(
        "duplicate", ALREADY_RECORDED, Recorded("rejected", "some reason")
    )
    changed = reused.model_copy(update={"amount_cents": 99})
    assert state.decide(changed) == Decision("rejected", ID_REUSED, Recorded("applied", None))
    for transfer in (same, changed):
        state.settle(transfer, state.decide(transfer))
    assert state.deltas() == {}


def test_a_replayed_transfer_moves_nothing_and_counts_as_seen() -> None:
    transfer = item(1, 2, 100)
    state = BatchState(accounts=ACCOUNTS, recorded=row_for(transfer, job_id=JOB), job_id=JOB)
    decision = state.decide(transfer)
    assert decision == Decision("applied", None, Recorded("applied", None))
    state.settle(transfer, decision)
    assert state.deltas() == {}
    assert state.decide(transfer) == Decision("duplicate", REPEATED_IN_BATCH)


def test_a_rejection_settled_by_the_database_moves_nothing() -> None:
    state = BatchState(accounts=ACCOUNTS, recorded={}, job_id=JOB)
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


def random_case(
    rng: random.Random,
) -> tuple[list[AccountRow], list[TransferItem], dict[UUID, RecordedTransfer]]:
    """Random accounts, a batch over them, and a few of its ids recorded by an earlier job."""
    accounts = [
        (account_id, rng.randrange(0, 1_000), rng.choice(["EUR", "EUR", "USD"]))
        for account_id in range(1, rng.randrange(2, 8))
    ]
    ids = [uuid4() for _ in range(30)]
    transfers = [
        item(rng.randrange(0, 9), rng.randrange(0, 9), rng.randrange(-50, 600), rng.choice(ids))
        for _ in range(rng.randrange(1, 60))
    ]
    recorded: dict[UUID, RecordedTransfer] = {}
    for transfer in rng.sample(transfers, min(3, len(transfers))):
        # Mostly the same content as one the batch carries; sometimes other content.
        content = transfer if rng.random() < 0.7 else item(1, 2, 5, transfer.id)
        recorded |= row_for(content, rng.choice(["applied", "rejected"]), "why")
    return accounts, transfers, recorded


def test_random_batches_keep_money_and_never_overdraw() -> None:
    rng = random.Random(20261122)
    for _ in range(200):
        accounts, transfers, recorded = random_case(rng)
        balance = {account_id: cents for account_id, cents, _ in accounts}
        currency = {account_id: code for account_id, _, code in accounts}
        planned = plan(transfers, accounts=accounts, recorded=recorded)

        assert sum(planned.deltas.values()) == 0
        for account_id, delta in planned.deltas.items():
            assert balance[account_id] + delta >= 0
        # Each id is recorded once at most, never when recorded before.
        ledger_ids = [row.id for row in planned.ledger]
        assert len(ledger_ids) == len(set(ledger_ids))
        assert not set(ledger_ids) & set(recorded)
        seen: set[UUID] = set()
        for transfer, decision in zip(transfers, planned.decisions, strict=True):
            held = recorded.get(transfer.id)
            if transfer.id in seen:
                assert decision == Decision("duplicate", REPEATED_IN_BATCH)
            elif held is not None:
                same = (held.from_account_id, held.to_account_id, held.amount_cents) == (
                    transfer.from_account,
                    transfer.to_account,
                    transfer.amount_cents,
                )
                assert decision.status == ("duplicate" if same else "rejected")
                assert decision.recorded == (held.status, held.reason)
            else:
                assert decision.recorded is None and decision.status != "duplicate"
            if decision.status != "duplicate":
                seen.add(transfer.id)
            if decision.status == "applied":
                assert transfer.amount_cents > 0
                assert transfer.from_account != transfer.to_account
                assert currency[transfer.from_account] == currency[transfer.to_account]
        # The net changes are exactly what the applied transfers add up to.
        expected: dict[int, int] = {}
        for row in planned.ledger:
            if row.status == "applied":
                expected[row.from_account_id] = expected.get(row.from_account_id, 0) - (
                    row.amount_cents
                )
                expected[row.to_account_id] = expected.get(row.to_account_id, 0) + row.amount_cents
        assert planned.deltas == {k: v for k, v in expected.items() if v}


def test_random_replays_report_what_the_first_run_decided() -> None:
    rng = random.Random(2611)
    for _ in range(200):
        accounts, transfers, earlier = random_case(rng)
        first = plan(transfers, accounts=accounts, recorded=earlier, job_id=JOB)
        ledger = earlier | ledger_after(first, job_id=JOB)
        after = balances_after(accounts, first)

        replay = plan(transfers, accounts=after, recorded=ledger, job_id=JOB)
        assert summarise(transfers, replay.decisions) == summarise(transfers, first.decisions)
        assert (replay.ledger, replay.deltas) == ([], {})

        later = plan(transfers, accounts=after, recorded=ledger, job_id="job-later")
        assert {d.status for d in later.decisions} <= {"duplicate", "rejected"}
        assert all(d.reason == ID_REUSED for d in later.decisions if d.status == "rejected")
        assert (later.ledger, later.deltas) == ([], {})


def test_stepping_the_state_gives_the_plan() -> None:
    rng = random.Random(7)
    ids = [uuid4() for _ in range(40)]
    transfers = [
        item(rng.randrange(1, 5), rng.randrange(1, 5), rng.randrange(-5, 700), rng.choice(ids))
        for _ in range(300)
    ]
    recorded = row_for(transfers[0], "rejected", "why")
    planned = plan(transfers, recorded=recorded)
    state = BatchState(accounts=ACCOUNTS, recorded=recorded, job_id=JOB)
    stepped = []
    for transfer in transfers:
        decision = state.decide(transfer)
        state.settle(transfer, decision)
        stepped.append(decision)
    assert stepped == planned.decisions
    assert state.deltas() == planned.deltas


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


def test_only_a_duplicate_of_a_recorded_transfer_carries_the_recorded_outcome() -> None:
    transfers = [item(1, 2, 5), item(1, 2, 5), item(1, 2, 5), item(1, 2, 5), item(1, 2, 5)]
    decisions = [
        Decision("duplicate", ALREADY_RECORDED, Recorded("rejected", "insufficient funds")),
        Decision("duplicate", ALREADY_RECORDED, Recorded("applied", None)),
        Decision("applied", None, Recorded("applied", None)),  # replayed: as first reported
        Decision("rejected", ID_REUSED, Recorded("applied", None)),
        Decision("duplicate", REPEATED_IN_BATCH),
    ]
    dumped = summarise(transfers, decisions).model_dump(mode="json")
    ids = [str(t.id) for t in transfers]
    assert (dumped["applied"], dumped["rejected"], dumped["duplicate"]) == (1, 1, 3)
    # The keys appear only when set: every other outcome looks as it always did.
    assert dumped["results"] == [
        {
            "id": ids[0],
            "status": "duplicate",
            "reason": ALREADY_RECORDED,
            "recorded_status": "rejected",
            "recorded_reason": "insufficient funds",
        },
        {
            "id": ids[1],
            "status": "duplicate",
            "reason": ALREADY_RECORDED,
            "recorded_status": "applied",
        },
        {"id": ids[2], "status": "applied", "reason": None},
        {"id": ids[3], "status": "rejected", "reason": ID_REUSED},
        {"id": ids[4], "status": "duplicate", "reason": REPEATED_IN_BATCH},
    ]
    assert TransferResult.model_validate(dumped).results[1].recorded_reason is None
