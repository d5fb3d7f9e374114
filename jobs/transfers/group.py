"""Group commit: small `transfer_funds` jobs running at once in one worker share one transaction.

A job of one transfer spends most of its database time on what every transaction pays (a pool
checkout, BEGIN, COMMIT and its WAL flush, a round trip per statement), not on its two rows. So
the jobs of one worker process that arrive while a transaction is under way wait for it, and
then go together: one transaction locks all their accounts in id order, reads the ledger's rows
for all their ids, decides each job in arrival order as if it ran alone after the jobs before it
(`plan.plan_group`), writes everything with one statement (each ledger row marked with its own
job's id) and commits once. Each job gets its own decisions back.

How a group forms: the first job to arrive starts a driver task. It lets the event loop run the
tasks that are ready once (jobs starting in the same moment join); in a burst (the previous group
ended moments ago) it also waits up to GROUP_WINDOW_S (2 ms) for more, or until GROUP_FULL_JOBS
wait. It then takes every job waiting, up to GROUP_MAX_TRANSFERS transfers. While that group's
transaction runs, newcomers wait, and they form the next group: the busier the worker, the
larger the groups, and a job arriving at an idle worker goes at once. One group (or lone job) is
in flight per process at a time.

- A group of one is not a group: that job runs its own `apply_alone` (the batch path, with its
  set-based write, per-transfer fallback and deadlock retries), in its own task.
- If the group's transaction fails for any reason (a transfer PostgreSQL refuses, an id another
  process recorded meanwhile, a deadlock with an outside writer, a lost connection), it has
  rolled back as a whole, and each of its jobs then runs alone, one after another in arrival
  order, each in its own task: one job's bad transfer never fails another job, and each gets
  what it would have got alone in that order.
- A job cancelled (a shutdown, `etl cancel`, its time limit) while it waits is left out. One
  cancelled while its group is being written is written with the group: its run ends cancelled,
  but its transfers may be committed, and a run again of the same job reports them as a replay
  (the ledger rows carry its job id), as after a crash.

The driver, the futures and the groups belong to one event loop; `group_commit_for` keeps one
GroupCommit per sessionmaker (one per engine, so per worker process), never shared across loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog

from jobs.errors import describe, sqlstate_of
from jobs.models import TransferItem
from jobs.spec import JobRun
from jobs.transfers.ledger import lock_accounts, recorded_transfers, write_group
from jobs.transfers.plan import Decision, accounts_to_lock, plan_group

log = structlog.get_logger("jobs.transfers")

GROUP_JOB_MAX_TRANSFERS = 10
"""A job with at most this many transfers goes through the group commit; larger ones run alone."""
GROUP_MAX_TRANSFERS = 500
"""A group takes waiting jobs until it holds this many transfers; the rest form the next group."""

GROUP_WINDOW_S = 0.002
"""In a burst, how long a group waits for more jobs before it goes (README, "Measured design
choices"); a job arriving at an idle worker goes at once."""
GROUP_FULL_JOBS = 8
"""A group waiting for company goes as soon as this many jobs wait (ETL_MAX_JOBS' default)."""
BURST_S = 0.05
"""A job arriving this soon after the last group or lone job ended is part of a burst."""

Decisions = list[Decision]


@dataclass(eq=False)
class Member:
    """One job in (or waiting for) a group."""

    run: JobRun
    transfers: Sequence[TransferItem]
    outcome: asyncio.Future[Decisions | None]
    """The job's decisions, written by its group; None: run alone. Cancelled with the job."""
    finished: asyncio.Future[None] = field(repr=False)
    """Done once the job's part is over, a run alone included."""

    @property
    def job_id(self) -> str | None:
        return self.run.job_id or None

    @property
    def left(self) -> bool:
        """The job stopped waiting (it was cancelled): nothing of it is to be written."""
        return self.outcome.cancelled()


Alone = Callable[[JobRun, Sequence[TransferItem]], Awaitable[Decisions]]
"""Apply one job's transfers in a transaction of its own (jobs.transfers.job.apply_alone)."""


async def apply_group(members: Sequence[Member]) -> list[Decisions | None]:
    """Several jobs in one transaction: lock, decide, write, commit once.

    Every job's accounts are locked in one statement, in ascending id order, as a batch's are;
    the ledger's rows for every job's ids are read; `plan_group` decides each job in arrival
    order as if it ran alone after the ones before it; one statement writes it all, each ledger
    row marked with its own job's id. No savepoint: if anything fails, the whole transaction
    rolls back and the group's jobs run alone instead. A job cancelled while the group read is
    left out (None).
    """
    everything = [transfer for member in members for transfer in member.transfers]
    async with members[0].run.sessionmaker() as session, session.begin():
        conn = await session.connection()
        driver, accounts = await lock_accounts(conn, accounts_to_lock(everything))
        recorded = await recorded_transfers(driver, everything)
        live = [member for member in members if not member.left]
        plan = plan_group(
            [(member.transfers, member.job_id) for member in live],
            accounts=accounts,
            recorded=recorded,
        )
        if plan.ledger:
            await write_group(driver, deltas=plan.deltas, ledger=plan.ledger)
    planned = dict(zip(live, plan.plans, strict=True))
    return [planned[member].decisions if member in planned else None for member in members]


class GroupCommit:
    """The jobs of one event loop waiting to be written together, and the task writing them."""

    def __init__(self, *, loop: asyncio.AbstractEventLoop, alone: Alone) -> None:
        self.loop = loop
        self._alone = alone
        self._waiting: list[Member] = []
        self._in_flight: list[Member] = []
        self._driver: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()
        self._last_end = float("-inf")  # when the last group or lone job ended
        # What tests and benchmarks read: how the jobs went.
        self.groups = 0
        self.grouped_jobs = 0
        self.alone = 0
        self.fallbacks = 0

    async def submit(self, run: JobRun, transfers: Sequence[TransferItem]) -> Decisions:
        """The job's decisions, written with whichever jobs wait with it, or alone."""
        member = Member(run, transfers, self.loop.create_future(), self.loop.create_future())
        self._waiting.append(member)
        self._arrived.set()
        if self._driver is None:
            # A context of its own: the driver's log lines and spans belong to no single job.
            self._driver = self.loop.create_task(self._drive(), context=contextvars.Context())
        try:
            decisions = await member.outcome
            if decisions is None:
                decisions = await self._alone(run, transfers)
            return decisions
        finally:
            if not member.finished.done():
                member.finished.set_result(None)

    async def _drive(self) -> None:
        try:
            while self._waiting:
                await self._company()
                group = self._in_flight = self._take()
                if len(group) > 1:
                    try:
                        self._hand_out(group, await apply_group(group))
                        group = []
                    except Exception as exc:
                        self._fell_back(exc, jobs=len(group))
                if group:  # alone, or after the group failed
                    self.alone += len(group) == 1
                    await self._each_alone(group)
                self._in_flight = []
                self._last_end = self.loop.time()
        finally:
            self._driver = None
            # Only if the driver itself was stopped (its loop closing): no job waits for ever.
            for member in (*self._in_flight, *self._waiting):
                if not member.outcome.done():
                    member.outcome.set_result(None)
            self._in_flight, self._waiting = [], []

    async def _company(self) -> None:
        """Let the jobs that are ready now join; in a burst, wait a little for more."""
        await asyncio.sleep(0)
        if self.loop.time() - self._last_end > BURST_S:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(GROUP_WINDOW_S):
                while len(self._waiting) < GROUP_FULL_JOBS:
                    self._arrived.clear()
                    await self._arrived.wait()

    def _take(self) -> list[Member]:
        """The waiting jobs, in arrival order, up to GROUP_MAX_TRANSFERS transfers (at least one
        job); those cancelled while waiting are dropped."""
        group: list[Member] = []
        size = 0
        while self._waiting:
            member = self._waiting[0]
            if member.outcome.done():
                self._waiting.pop(0)
                continue
            if group and size + len(member.transfers) > GROUP_MAX_TRANSFERS:
                break
            group.append(self._waiting.pop(0))
            size += len(member.transfers)
        return group

    def _hand_out(self, group: list[Member], outcomes: list[Decisions | None]) -> None:
        self.groups += 1
        for member, decisions in zip(group, outcomes, strict=True):
            if not member.outcome.done():
                self.grouped_jobs += decisions is not None
                member.outcome.set_result(decisions)

    def _fell_back(self, exc: Exception, *, jobs: int) -> None:
        self.fallbacks += 1
        log.warning(
            "transfers.group_fallback",
            jobs=jobs,
            error_type=type(exc).__name__,
            sqlstate=sqlstate_of(exc),
            error=describe(exc),
        )

    async def _each_alone(self, members: list[Member]) -> None:
        """Each job runs alone in its own task, one after another in arrival order."""
        for member in members:
            if member.outcome.done():
                continue  # cancelled
            member.outcome.set_result(None)
            await member.finished


_GROUPS: weakref.WeakKeyDictionary[object, GroupCommit] = weakref.WeakKeyDictionary()


def group_commit_for(key: object, *, alone: Alone) -> GroupCommit:
    """The GroupCommit of `key` (the jobs' sessionmaker) on the running event loop."""
    loop = asyncio.get_running_loop()
    group = _GROUPS.get(key)
    if group is None or group.loop is not loop:
        group = _GROUPS[key] = GroupCommit(loop=loop, alone=alone)
    return group
