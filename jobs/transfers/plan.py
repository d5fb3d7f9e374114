"""What a batch of transfers does: pure functions, no I/O.

The job reads the batch's accounts (locked) and the ledger's rows for the batch's ids, and these
rules decide, in input order, what happens to each transfer. The set-based path applies a whole
plan at once; the per-transfer fallback asks the same `BatchState` one transfer at a time, so both
paths give the same outcomes. `plan_group` decides several jobs written by one transaction (group
commit): each job by `plan_batch`, as if it ran alone after the jobs before it.

A transfer is checked in this order, and the first rule it breaks is its outcome:

1. its id came earlier in this batch: `duplicate` (`repeated in this batch`), whatever it
   carries;
2. its id is already in the ledger (see below): the ledger's row decides, and this run writes
   nothing and moves no money for it;
3. amount_cents is 0 or negative;
4. from_account and to_account are the same account;
5. from_account, then to_account, does not exist;
6. the two accounts hold different currencies (no conversion rate is known here, so such a
   transfer is rejected rather than guessed at);
7. from_account holds less than amount_cents (balances as left by the transfers before it);
8. to_account's balance would leave PostgreSQL's bigint range.

A transfer that breaks rule 3 to 8 is `rejected` with that rule's reason and recorded in the
ledger; one that breaks none is `applied`.

An id the ledger holds (rule 2) is judged against the row recorded for it, which names the job
that wrote it:

- different accounts or amount: `rejected`, `id reused with different content` (not recorded:
  the ledger keeps the first);
- written by this very job (same arq job id: a run that committed, then crashed before arq stored
  its result, and runs again): the recorded status and reason, as the first run reported them;
- written by another job: `duplicate`, `already recorded`, with the recorded status and reason
  alongside (`Decision.recorded`).

Rule 1 comes first and a replayed transfer counts as seen, so a replay repeats the first run's
`repeated in this batch` outcomes too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple
from uuid import UUID

from jobs.models import TransferItem
from jobs.validation import BIGINT_MAX

Status = Literal["applied", "rejected", "duplicate"]
RecordedStatus = Literal["applied", "rejected"]

ALREADY_RECORDED = "already recorded"
REPEATED_IN_BATCH = "repeated in this batch"
ID_REUSED = "id reused with different content"
NOT_POSITIVE = "amount_cents: must be greater than 0"
SAME_ACCOUNT = "to_account: same account as from_account"
UNKNOWN_FROM = "from_account: unknown account"
UNKNOWN_TO = "to_account: unknown account"
CURRENCY_MISMATCH = "currency mismatch"
INSUFFICIENT_FUNDS = "insufficient funds"
BALANCE_OVERFLOW = "to_account: balance would exceed the bigint range"


AccountRow = tuple[int, int, str]
"""id, balance_cents, currency: an account as the job reads it."""


class Recorded(NamedTuple):
    """The outcome the ledger holds for an id: its status and reason."""

    status: RecordedStatus
    reason: str | None


@dataclass(frozen=True, slots=True)
class Decision:
    """One transfer's outcome and, unless it was applied, why.

    `recorded` is set when the outcome was read from the ledger rather than decided now (a
    duplicate of another job's transfer, a replay of this job's own, an id reused with different
    content): such a decision writes nothing and moves no money.
    """

    status: Status
    reason: str | None = None
    recorded: Recorded | None = None

    @property
    def writes(self) -> bool:
        """Whether this run records the transfer in the ledger."""
        return self.recorded is None and self.status != "duplicate"


APPLIED = Decision("applied")


class RecordedTransfer(NamedTuple):
    """A ledger row for one of the batch's ids, as the job reads it back (without the id)."""

    from_account_id: int
    to_account_id: int
    amount_cents: int
    status: RecordedStatus
    reason: str | None
    job_id: str | None
    """The arq job that wrote it (None for rows written before jobs were recorded)."""

    def outcome(self, transfer: TransferItem, *, job_id: str | None) -> Decision:
        """What `transfer`, carrying this row's id, comes to in job `job_id`."""
        recorded = Recorded(self.status, self.reason)
        if (self.from_account_id, self.to_account_id, self.amount_cents) != (
            transfer.from_account,
            transfer.to_account,
            transfer.amount_cents,
        ):
            return Decision("rejected", ID_REUSED, recorded)
        if job_id is not None and self.job_id == job_id:
            return Decision(self.status, self.reason, recorded)  # this job's own, replayed
        return Decision("duplicate", ALREADY_RECORDED, recorded)


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
        assert decision.recorded is None, "the ledger holds this id already"
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
    """Balances, the ledger's rows and the ids seen as a batch is worked through in order.

    `decide` runs for every transfer of every batch, so it looks each thing up once.
    `job_id` is the arq job running the batch: the ledger's rows it wrote are its own, replayed.
    """

    def __init__(
        self,
        *,
        accounts: Sequence[AccountRow],
        recorded: Mapping[UUID, RecordedTransfer],
        job_id: str | None,
    ) -> None:
        self._balance = {row[0]: row[1] for row in accounts}
        self._currency = {row[0]: row[2] for row in accounts}
        self._initial = dict(self._balance)
        self._recorded = dict(recorded)
        self._job_id = job_id or None  # no job id: no run can be this one's replay
        self._seen: set[UUID] = set()  # ids settled earlier in this batch

    def decide(self, transfer: TransferItem) -> Decision:
        """What `transfer` would do now; changes nothing."""
        if transfer.id in self._seen:
            return Decision("duplicate", REPEATED_IN_BATCH)
        if self._recorded:
            row = self._recorded.get(transfer.id)
            if row is not None:
                return row.outcome(transfer, job_id=self._job_id)
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
        """Take `decision` as the outcome: mark the id seen and, if applied now, move the money.

        A duplicate leaves the id unseen, so a later sighting is judged the same way.
        """
        if decision.status == "duplicate":
            return
        self._seen.add(transfer.id)
        if decision.status == "applied" and decision.recorded is None:
            self._balance[transfer.from_account] -= transfer.amount_cents
            self._balance[transfer.to_account] += transfer.amount_cents

    def learn(self, recorded: Mapping[UUID, RecordedTransfer]) -> None:
        """The ledger turned out to hold these rows too (another job recorded them meanwhile)."""
        self._recorded.update(recorded)

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
    recorded: Mapping[UUID, RecordedTransfer],
    job_id: str | None,
) -> BatchPlan:
    """Decide every transfer in order, given the accounts and the ledger's rows for its ids."""
    state = BatchState(accounts=accounts, recorded=recorded, job_id=job_id)
    plan = BatchPlan()
    decide, settle = state.decide, state.settle
    decisions, ledger = plan.decisions, plan.ledger
    for transfer in transfers:
        decision = decide(transfer)
        settle(transfer, decision)
        decisions.append(decision)
        if decision.recorded is None and decision.status != "duplicate":  # .writes, inlined
            ledger.append(LedgerRow.of(transfer, decision))
    plan.deltas = state.deltas()
    return plan


class GroupLedgerRow(NamedTuple):
    """A ledger row a group writes, with the job (of the group's) it belongs to."""

    row: LedgerRow
    job_id: str | None


@dataclass(slots=True)
class GroupPlan:
    """Each job's plan (arrival order), and what the group writes: net balance changes and the
    ledger rows, each marked with its own job."""

    plans: list[BatchPlan] = field(default_factory=list)
    deltas: dict[int, int] = field(default_factory=dict)
    ledger: list[GroupLedgerRow] = field(default_factory=list)


def plan_group(
    jobs: Sequence[tuple[Sequence[TransferItem], str | None]],
    *,
    accounts: Sequence[AccountRow],
    recorded: Mapping[UUID, RecordedTransfer],
) -> GroupPlan:
    """Decide several jobs' batches (transfers, job id) as if each ran alone, one after another.

    `accounts` and `recorded` are what the group read: every job's accounts, locked, and the
    ledger's rows for every job's ids. Each job is planned by `plan_batch` on the balances the
    jobs before it left and on the ledger as it would read it after their commits: the rows read,
    plus the rows the earlier jobs write, under their own job ids. So a job's decisions are
    exactly those it would get running alone after the jobs before it, whatever shares the
    group: an id an earlier job records is that job's (`duplicate`, or a replay when it is the
    same job id), and repeats within one job stay that job's own (`repeated in this batch`).
    """
    balance = {row[0]: row[1] for row in accounts}
    currency = {row[0]: row[2] for row in accounts}
    ledger = dict(recorded)
    group = GroupPlan()
    for transfers, job_id in jobs:
        own_accounts = [
            (account_id, balance[account_id], currency[account_id])
            for account_id in accounts_to_lock(transfers)
            if account_id in balance
        ]
        own_recorded = {t.id: ledger[t.id] for t in transfers if t.id in ledger}
        plan = plan_batch(transfers, accounts=own_accounts, recorded=own_recorded, job_id=job_id)
        for account_id, delta in plan.deltas.items():
            balance[account_id] += delta
        for row in plan.ledger:
            ledger[row.id] = RecordedTransfer(
                row.from_account_id, row.to_account_id, row.amount_cents, row.status, row.reason,
                job_id,
            )  # fmt: skip
            group.ledger.append(GroupLedgerRow(row, job_id))
        group.plans.append(plan)
    initial = {row[0]: row[1] for row in accounts}
    group.deltas = {
        account_id: cents - initial[account_id]
        for account_id, cents in balance.items()
        if cents != initial[account_id]
    }
    return group
