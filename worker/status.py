"""What Redis knows about a job: its state, progress, result or failure, and the failed-job list.

arq keeps a queued job under `arq:job:<id>` (plus its id in the queue's sorted set), marks a
running one with `arq:in-progress:<id>`, counts its runs in `arq:retry:<id>`, and keeps a
finished one's outcome under `arq:result:<id>` for `keep_result` seconds. The runner adds the
progress counters under `etl:progress:<id>`; `etl retry` leaves `etl:retried:<id>` behind.
A job cancelled while it ran is recorded by arq as failed with CancelledError, and one cancelled
while it waited is recorded so by `etl cancel`: both read back as `cancelled`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from redis.asyncio import Redis

from worker.errors import JobError, UnreadableRecord
from worker.keys import (
    PROGRESS_KEY_PREFIX,
    RETRIED_KEY_PREFIX,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from worker.serialization import deserialize
from worker.tracing import TRACE_KWARG

State = Literal["queued", "deferred", "in_progress", "complete", "failed", "cancelled", "not_found"]


def _when(ms: Any) -> datetime | None:
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None  # not a time a record from another app could mean


# A record written by another app may hold any JSON in any field: show what fits, never fail.
def _text_field(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _list_field(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _dict_field(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _kwargs_field(value: Any) -> dict[str, Any]:
    """The job's arguments, without the trace context the client may send along."""
    kwargs = _dict_field(value)
    kwargs.pop(TRACE_KWARG, None)
    return kwargs


def _int_field(value: Any, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str | bytes) and value.strip().isdigit():
        return int(value)
    return default


def _error_of(value: Any) -> JobError:
    if isinstance(value, JobError):
        return value
    # arq stores a plain text when a result could not be serialised.
    return JobError("JobFailed", str(value))


@dataclass(frozen=True)
class JobState:
    """One job as Redis knows it."""

    job_id: str
    state: State
    function: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    tries: int = 0
    """Runs started so far (0 while a job waits for its first run)."""
    queue_name: str | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    runs_at: datetime | None = None
    """For a queued or deferred job: when it becomes runnable."""
    progress: dict[str, Any] | None = None
    result: Any = None
    error: JobError | None = None
    retried_as: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("complete", "failed", "cancelled")

    def as_json(self, *, with_arguments: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"job_id": self.job_id, "state": self.state}
        if self.state == "not_found":
            return out
        out.update(function=self.function, tries=self.tries, queue=self.queue_name)
        for name in ("enqueued_at", "started_at", "finished_at", "runs_at"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.isoformat()
        if with_arguments:
            out.update(args=self.args, kwargs=self.kwargs)
        if self.progress is not None:
            out["progress"] = self.progress
        if self.state == "complete":
            out["result"] = self.result
        if self.error is not None:
            out["error"] = {"kind": self.error.kind, "message": self.error.message}
        if self.retried_as is not None:
            out["retried_as"] = self.retried_as
        return out


def _record(raw: bytes, job_id: str) -> Any:
    try:
        return deserialize(raw)
    except ValueError:  # JSON and UTF-8 errors both
        raise UnreadableRecord(
            f"job {job_id}: its Redis record is not in this service's JSON job format"
        ) from None


def _from_result(job_id: str, raw: bytes, *, retried_as: str | None) -> JobState:
    record = _record(raw, job_id)
    if not isinstance(record, dict):
        raise UnreadableRecord(f"job {job_id}: its Redis record is not a JSON object")
    success = bool(record.get("s"))
    error = None if success else _error_of(record.get("r"))
    state: State = "complete" if error is None else "failed"
    if error is not None and error.is_cancellation:
        state = "cancelled"
    return JobState(
        job_id=job_id,
        state=state,
        function=_text_field(record.get("f")),
        args=_list_field(record.get("a")),
        kwargs=_kwargs_field(record.get("k")),
        tries=_int_field(record.get("t"), 1),
        queue_name=_text_field(record.get("q")),
        enqueued_at=_when(record.get("et")),
        started_at=_when(record.get("st")),
        finished_at=_when(record.get("ft")),
        result=record.get("r") if success else None,
        error=error,
        retried_as=retried_as,
    )


def _progress(raw: bytes | None) -> dict[str, Any] | None:
    try:
        value = deserialize(raw) if raw else None
    except ValueError:
        return None  # progress is best effort
    return value if isinstance(value, dict) else None


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


async def read_state(redis: Redis, job_id: str, *, queue_name: str) -> JobState:
    """The job's state in one round trip."""
    (state,) = await read_states(redis, [job_id], queue_name=queue_name)
    return state


_READS_PER_JOB = 7


async def read_states(
    redis: Redis, job_ids: Sequence[str], *, queue_name: str, strict: bool = True
) -> list[JobState]:
    """The jobs' states in one round trip, in the order given.

    `strict=False` reads a record this service cannot read as not found rather than failing.
    """
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.get(result_key_prefix + job_id)
            pipe.get(job_key_prefix + job_id)
            pipe.exists(in_progress_key_prefix + job_id)
            pipe.zscore(queue_name, job_id)
            pipe.get(retry_key_prefix + job_id)
            pipe.get(PROGRESS_KEY_PREFIX + job_id)
            pipe.get(RETRIED_KEY_PREFIX + job_id)
        replies = await pipe.execute() if job_ids else []
    states = []
    for index, job_id in enumerate(job_ids):
        reply = replies[index * _READS_PER_JOB : (index + 1) * _READS_PER_JOB]
        try:
            states.append(_state_of(job_id, *reply, queue_name=queue_name))
        except UnreadableRecord:
            if strict:
                raise
            states.append(JobState(job_id=job_id, state="not_found"))
    return states


def _state_of(
    job_id: str,
    result: bytes | None,
    job: bytes | None,
    in_progress: int,
    score: float | None,
    runs: bytes | None,
    progress: bytes | None,
    retried: bytes | None,
    *,
    queue_name: str,
) -> JobState:
    if result:
        return _from_result(job_id, result, retried_as=_text(retried))
    if not job and score is None:
        return JobState(job_id=job_id, state="not_found")
    record = _record(job, job_id) if job else {}
    if not isinstance(record, dict):
        record = {}  # queued all the same; the worker will fail it as an invalid job
    runs_at = _when(score)
    state: State
    if in_progress:
        state = "in_progress"
    elif runs_at is not None and runs_at > datetime.now(UTC):
        state = "deferred"
    else:
        state = "queued"
    return JobState(
        job_id=job_id,
        state=state,
        function=_text_field(record.get("f")),
        args=_list_field(record.get("a")),
        kwargs=_kwargs_field(record.get("k")),
        tries=_int_field(runs, 0),
        queue_name=queue_name,
        enqueued_at=_when(record.get("et")),
        runs_at=None if state == "in_progress" else runs_at,
        progress=_progress(progress) if state == "in_progress" else None,
    )


async def list_failed(
    redis: Redis, *, queue_name: str, include_retried: bool = False, scan_count: int = 1000
) -> list[JobState]:
    """Failed jobs of this queue still kept in Redis, newest first."""
    failed: list[JobState] = []
    keys: list[bytes] = []

    async def flush(batch: Sequence[bytes]) -> None:
        ids = [key.decode().removeprefix(result_key_prefix) for key in batch]
        async with redis.pipeline(transaction=False) as pipe:
            pipe.mget(list(batch))
            pipe.mget([RETRIED_KEY_PREFIX + job_id for job_id in ids])
            records, markers = await pipe.execute()
        for job_id, raw, marker in zip(ids, records, markers, strict=True):
            if raw is None:  # expired between SCAN and MGET
                continue
            try:
                state = _from_result(job_id, raw, retried_as=_text(marker))
            except UnreadableRecord:
                continue  # another app's result (arq pickles by default) in a shared Redis

            if state.queue_name != queue_name or state.state != "failed":
                continue
            if state.retried_as is not None and not include_retried:
                continue
            failed.append(state)

    async for key in redis.scan_iter(match=result_key_prefix + "*", count=scan_count):
        keys.append(key)
        if len(keys) >= scan_count:
            await flush(keys)
            keys = []
    if keys:
        await flush(keys)
    epoch = datetime.min.replace(tzinfo=UTC)
    failed.sort(key=lambda s: s.finished_at or epoch, reverse=True)
    return failed
