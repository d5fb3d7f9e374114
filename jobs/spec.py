"""The contract a job is written against: the spec the decorator makes, the run handle it gets.

A job module writes `async def impl(run: JobRun, payload: SomePayload) -> SomeResult` and wraps
it with `@etl_job(...)`. The worker (worker/runner.py) validates the payload, builds the run
handle, enforces the time limit, retries and logs; the job only does its work.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from jobs.storage import ObjectPath

PayloadT = TypeVar("PayloadT", bound=BaseModel)
ResultT = TypeVar("ResultT", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class JobConfig:
    """The settings jobs read; the worker fills it from its own settings at start-up."""

    import_dir: Path | ObjectPath
    """A local directory, or a prefix in a bucket (`s3://` settings: jobs/storage.py)."""
    export_dir: Path | ObjectPath
    export_keep: int
    nightly_datasets: tuple[str, ...]


class JobRun(Protocol):
    """What a job receives for one run: its identity, the database, its settings, progress."""

    @property
    def job_id(self) -> str: ...

    @property
    def job_try(self) -> int: ...

    @property
    def config(self) -> JobConfig: ...

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        """Open one session per unit of work: `async with run.sessionmaker() as s, s.begin():`."""
        ...

    @property
    def counters(self) -> dict[str, int]: ...

    async def progress(self, **counters: int) -> None:
        """Record progress (rows so far...); the worker publishes it every few seconds."""
        ...

    async def enqueue(self, function: str, *, job_id: str, **kwargs: Any) -> bool:
        """Enqueue another job of the catalogue under `job_id` (keyword arguments only);
        False when that id is already taken (queued, running or its result kept)."""
        ...

    async def claim(self, name: str, *, owner: str, ttl_s: int) -> bool:
        """Take the once-only claim `name` for `owner`, for `ttl_s` seconds: True if it is
        `owner`'s (now, or already), False if another owner holds it."""
        ...

    async def outcomes(self, job_ids: Sequence[str]) -> list[JobOutcome | None]:
        """Each job's outcome once it has finished for good, None while it waits or runs."""
        ...


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How another job ended: its result (as JSON) or its error in one line."""

    ok: bool
    result: Any = None
    error: str = ""


@dataclass(frozen=True)
class JobSpec(Generic[PayloadT, ResultT]):
    """A job as the worker registers it and the client enqueues it."""

    name: str
    payload: type[PayloadT]
    result: type[ResultT]
    timeout_s: float
    impl: Callable[[JobRun, PayloadT], Awaitable[ResultT]]


def etl_job(
    *, name: str, payload: type[PayloadT], result: type[ResultT], timeout_s: float
) -> Callable[[Callable[[JobRun, PayloadT], Awaitable[ResultT]]], JobSpec[PayloadT, ResultT]]:
    """Make a job function into a JobSpec: its name in Redis, its models and its time limit."""

    def wrap(
        impl: Callable[[JobRun, PayloadT], Awaitable[ResultT]],
    ) -> JobSpec[PayloadT, ResultT]:
        return JobSpec(name=name, payload=payload, result=result, timeout_s=timeout_s, impl=impl)

    return wrap


AnySpec = JobSpec[Any, Any]
