"""What a batch of transfers does: pure functions, no I/O.

The job reads the batch's accounts (locked) and the ids already in the ledger, and these rules
decide, in input order, what happens to each transfer. The set-based path applies a whole plan
at once; the per-transfer fallback asks the same `BatchState` one transfer at a time, so both
paths give the same outcomes.

A transfer is checked in this order, and the first rule it breaks is its outcome:

1. its id is already in the ledger, or came earlier in this batch: `duplicate`, nothing changes
   and nothing is recorded;
2. amount_cents is 0 or negative;
3. from_account and to_account are the same account;
4. from_account, then to_account, does not exist;
5. the two accounts hold different currencies (no conversion rate is known here, so such a
   transfer is rejected rather than guessed at);
6. from_account holds less than amount_cents (balances as left by the transfers before it);
7. to_account's balance would leave PostgreSQL's bigint range.

A transfer that breaks rule 2 to 7 is `rejected` with that rule's reason and recorded in the
ledger; one that breaks none is `applied`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Literal, NamedTuple
from uuid import UUID

from jobs.models import TransferItem
from jobs.validation import BIGINT_MAX

Status = Literal["applied", "rejected", "duplicate"]

ALREADY_RECORDED = "already recorded"
REPEATED_IN_BATCH = "repeated in this batch"
NOT_POSITIVE = "amount_cents: must be greater than 0"
SAME_ACCOUNT = "to_account: same account as from_account"
UNKNOWN_FROM = "from_account: unknown account"
UNKNOWN_TO = "to_account: unknown account"
CURRENCY_MISMATCH = "currency mismatch"
INSUFFICIENT_FUNDS = "insufficient funds"
BALANCE_OVERFLOW = "to_account: balance would exceed the bigint range"


AccountRow = tuple[int, int, str]
"""id, balance_cents, currency: an account as the job reads it."""


@dataclass(frozen=True, slots=True)
class Decision:
    """One transfer's outcome and, unless it was applied, why."""

    status: Status
    reason: str | None = None


APPLIED = Decision("applied")


class LedgerRow(NamedTuple):
    """One row of the `transfers` ledger, as the job writes it."""

    id: UUID
    from_account_id: int
    to_account_id: int
    amount_cents: int
    status: Literal["applied", "rejected"]
    reason: str | None

    @classmethod
    def of(cls, transfer: TransferItem, decision: Decision) -> LedgerRow:
        assert decision.status != "duplicate", "a duplicate is never recorded"
        return cls(
            transfer.id,
            transfer.from_account,
            transfer.to_account,
            transfer.amount_cents,
            decision.status,
            decision.reason,
        )


def transfer_deltas(transfer: TransferItem) -> dict[int, int]:
    """How an applied transfer moves each account's balance."""
    return {
        transfer.from_account: -transfer.amount_cents,
        transfer.to_account: +transfer.amount_cents,
    }


class BatchState:
    """Balances and recorded ids as a batch is worked through in order.

    `decide` runs for every transfer of every batch, so it looks each thing up once.
    """

    def __init__(self, *, accounts: Sequence[AccountRow], recorded: AbstractSet[UUID]) -> None:
        self._balance = {row[0]: row[1] for row in accounts}
        self._currency = {row[0]: row[2] for row in accounts}
        self._initial = dict(self._balance)
        # id -> why another transfer with this id is a duplicate
        self._seen = dict.fromkeys(recorded, ALREADY_RECORDED)

    def decide(self, transfer: TransferItem) -> Decision:
        """What `transfer` would do now; changes nothing."""
        seen = self._seen.get(transfer.id)
        if seen is not None:
            return Decision("duplicate", seen)
        amount = transfer.amount_cents
        if amount <= 0:
            return Decision("rejected", NOT_POSITIVE)
        source, target = transfer.from_account, transfer.to_account
        if source == target:
            return Decision("rejected", SAME_ACCOUNT)
        balance = self._balance
        source_balance = balance.get(source)
        if source_balance is None:
            return Decision("rejected", UNKNOWN_FROM)
        target_balance = balance.get(target)
        if target_balance is None:
            return Decision("rejected", UNKNOWN_TO)
        currency = self._currency
        if currency[source] != currency[target]:
            return Decision(
                "rejected",
                f"{CURRENCY_MISMATCH}: from_account holds {currency[source]}, "
                f"to_account holds {currency[target]}",
            )
        if source_balance < amount:
            return Decision(
                "rejected",
                f"{INSUFFICIENT_FUNDS}: from_account holds {source_balance} cents, "
                f"amount_cents is {amount}",
            )
        if target_balance > BIGINT_MAX - amount:
            return Decision("rejected", BALANCE_OVERFLOW)
        return APPLIED

    def settle(self, transfer: TransferItem, decision: Decision) -> None:
        """Take `decision` as the outcome: record the id and, if applied, move the money."""
        if decision.status == "duplicate":
            return
        self._seen[transfer.id] = REPEATED_IN_BATCH
        if decision.status == "applied":
            self._balance[transfer.from_account] -= transfer.amount_cents
            self._balance[transfer.to_account] += transfer.amount_cents

    def mark_recorded(self, transfer_id: UUID) -> None:
        """The ledger turned out to hold `transfer_id` already (another job recorded it)."""
        self._seen[transfer_id] = ALREADY_RECORDED

    def deltas(self) -> dict[int, int]:
        """Net balance change per account so far, without the accounts left unchanged."""
        initial = self._initial
        return {
            account_id: balance - initial[account_id]
            for account_id, balance in self._balance.items()
            if balance != initial[account_id]
        }


@dataclass(slots=True)
class BatchPlan:
    """Every transfer's outcome (input order), the net balance changes and the ledger rows."""

    decisions: list[Decision] = field(default_factory=list)
    deltas: dict[int, int] = field(default_factory=dict)
    ledger: list[LedgerRow] = field(default_factory=list)


def accounts_to_lock(transfers: Iterable[TransferItem]) -> list[int]:
    """The accounts a batch may move money between, ascending: the order every job locks them in.

    A transfer with a non-positive amount or one account on both sides is rejected whatever the
    balances, so its accounts need no lock.
    """
    ids: set[int] = set()
    for transfer in transfers:
        if transfer.amount_cents > 0 and transfer.from_account != transfer.to_account:
            ids.add(transfer.from_account)
            ids.add(transfer.to_account)
    return sorted(ids)


def plan_batch(
    transfers: Sequence[TransferItem],
    *,
    accounts: Sequence[AccountRow],
    recorded: AbstractSet[UUID],
) -> BatchPlan:
    """Decide every transfer in order, given the accounts and the ids already in the ledger."""
    state = BatchState(accounts=accounts, recorded=recorded)
    plan = BatchPlan()
    decide, settle = state.decide, state.settle
    decisions, ledger = plan.decisions, plan.ledger
    for transfer in transfers:
        decision = decide(transfer)
        settle(transfer, decision)
        decisions.append(decision)
        if decision.status != "duplicate":
            ledger.append(LedgerRow.of(transfer, decision))
    plan.deltas = state.deltas()
    return plan
