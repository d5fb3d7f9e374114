"""From an app's request to arq's job record: the payload checked against its job's model, the
record's bytes, whether a failed job can be enqueued again as it was, and cancelling a job."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from arq.utils import timestamp_ms
from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis

from jobs.catalogue import BY_NAME
from jobs.errors import InvalidPayload, payload_error
from jobs.spec import JobSpec
from worker import tracing
from worker.errors import CANCELLED_KIND, CannotCancel, CannotRetry, JobError, JobNotFound
from worker.finished import record_finished
from worker.keys import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from worker.scripts import CANCEL_SCRIPT
from worker.serialization import deserialize, serialize
from worker.settings import Settings
from worker.status import JobState, read_state

PayloadT = TypeVar("PayloadT", bound=BaseModel)


def validate(spec: JobSpec[PayloadT, Any], payload: PayloadT | Mapping[str, Any]) -> PayloadT:
    """The payload as the worker will see it; InvalidPayload (field and reason) otherwise."""
    if isinstance(payload, BaseModel):
        if not isinstance(payload, spec.payload):
            raise InvalidPayload(
                f"invalid payload: {spec.name} takes {spec.payload.__name__}, "
                f"got {type(payload).__name__}"
            )
        # Checked again: a model built with model_construct() skipped validation.
        data: Any = payload.model_dump(mode="json")
    else:
        data = payload
    try:
        return spec.payload.model_validate(data)
    except ValidationError as exc:
        raise payload_error(exc) from None


def compact(value: Any, limit: int = 200) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def job_bytes(function: str, kwargs: Mapping[str, Any], *, enqueue_time_ms: int) -> bytes:
    """arq's job record (`t` try, `f` function, `a` args, `k` kwargs, `et` enqueue time) as JSON.

    An app that traces (worker/tracing.py) sends its current span's context along in the kwargs,
    so the job's span joins the app's trace.
    """
    trace = tracing.carrier()
    if trace is not None:
        kwargs = {**kwargs, tracing.TRACE_KWARG: trace}
    return serialize({"t": 1, "f": function, "a": [], "k": kwargs, "et": enqueue_time_ms})


def retryable(state: JobState, *, queue_name: str) -> tuple[JobSpec[Any, Any], BaseModel]:
    """The job and payload to enqueue again for a failed job; JobNotFound or CannotRetry."""
    job_id = state.job_id
    if state.state == "not_found":
        raise JobNotFound(f"job {job_id} not found (failures are kept ETL_KEEP_RESULT seconds)")
    if state.state != "failed":
        raise CannotRetry(f"job {job_id} is {state.state}, not failed: nothing to retry")
    if state.queue_name != queue_name:
        raise CannotRetry(f"job {job_id} ran on queue {state.queue_name!r}, not this one")
    if state.retried_as is not None:
        raise CannotRetry(f"job {job_id} was already retried as {state.retried_as}")
    spec = BY_NAME.get(state.function or "")
    if spec is None:
        raise CannotRetry(f"job {job_id} ran {state.function!r}, which this worker does not run")
    if state.args:
        raise CannotRetry(f"job {job_id} has positional arguments; jobs take keyword arguments")
    try:
        return spec, validate(spec, state.kwargs)
    except InvalidPayload as exc:
        raise CannotRetry(f"job {job_id} cannot succeed as enqueued: {exc.message}") from None


# CANCEL_SCRIPT's answers.
_UNKNOWN, _FINISHED, _RUNNING, _CHANGED, _REMOVED = range(5)
# A result must outlive the cancel to be read back, even when results are not kept.
_MIN_CANCELLED_KEEP_MS = 60_000


async def cancel_job(
    redis: Redis, job_id: str, *, settings: Settings, wait: float, poll_delay: float = 0.1
) -> JobState:
    """Cancel a job of `settings`' queue; its state afterwards: `cancelled`, or `in_progress`.

    A queued or deferred job is removed at once. A running one is aborted through arq: its worker
    cancels it at its next await (its transaction rolls back) and records it as cancelled, not
    to be retried; it is still `in_progress` if that has not happened within `wait` seconds.
    JobNotFound if the job is unknown; CannotCancel if it has finished, or finished meanwhile.
    """
    queue_name, keep_result_s = settings.queue_name, settings.keep_result_s
    asked = await _ask_cancel(redis, job_id, queue_name=queue_name, keep_result_s=keep_result_s)
    if asked == _RUNNING:
        await _settled(redis, job_id, within=wait, poll_delay=poll_delay)
        state = await read_state(redis, job_id, queue_name=queue_name)
        if state.state in ("queued", "deferred"):
            # A shutdown stopped it at that moment and arq queued it again: take it off the queue.
            asked = await _ask_cancel(
                redis, job_id, queue_name=queue_name, keep_result_s=keep_result_s
            )
    if asked == _REMOVED:  # no worker will index it: the dashboard lists it from here
        await record_finished(redis, queue_name=queue_name, job_ids=[job_id], keep_s=keep_result_s)
    state = await read_state(redis, job_id, queue_name=queue_name)
    if asked == _UNKNOWN:
        raise JobNotFound(
            f"job {job_id} not found on queue {queue_name!r}: never enqueued there, "
            "or its result expired (ETL_KEEP_RESULT)"
        )
    if asked == _FINISHED:
        raise CannotCancel(f"job {job_id} has already finished ({state.state}): nothing to cancel")
    if state.state in ("complete", "failed"):
        raise CannotCancel(f"job {job_id} finished ({state.state}) before it could be cancelled")
    return state


async def _ask_cancel(redis: Redis, job_id: str, *, queue_name: str, keep_result_s: int) -> int:
    keys = [
        queue_name,
        job_key_prefix + job_id,
        in_progress_key_prefix + job_id,
        result_key_prefix + job_id,
        retry_key_prefix + job_id,
        abort_jobs_ss,
    ]
    keep_ms = max(keep_result_s * 1000, _MIN_CANCELLED_KEEP_MS)
    for _ in range(5):
        async with redis.pipeline(transaction=False) as pipe:
            pipe.get(keys[1])
            pipe.get(keys[4])
            record, runs = await pipe.execute()
        now = timestamp_ms()
        result = _cancelled_result(job_id, record, runs, queue_name=queue_name, now_ms=now)
        argv: list[Any] = [job_id, record or b"", result, now, keep_ms]
        answer = int(await redis.eval(CANCEL_SCRIPT, len(keys), *keys, *argv))  # type: ignore[misc]
        if answer != _CHANGED:
            return answer
    raise CannotCancel(f"job {job_id} kept changing while it was being cancelled; try again")


def _cancelled_result(
    job_id: str, record: bytes | None, runs: bytes | None, *, queue_name: str, now_ms: int
) -> bytes:
    """The result arq would record for a job aborted before it started, in this service's JSON."""
    try:
        job = deserialize(record) if record else {}
    except ValueError:
        job = {}
    if not isinstance(job, dict):
        job = {}
    tries = int(runs) if runs and runs.isdigit() else 0
    error = JobError(CANCELLED_KIND, "cancelled while it waited to run")
    return serialize(
        {
            **{k: job.get(k) for k in ("f", "a", "k", "et")},
            "t": tries,
            "s": False,
            "r": error,
            "st": now_ms,
            "ft": now_ms,
            "q": queue_name,
            "id": job_id,
        }
    )


async def _settled(redis: Redis, job_id: str, *, within: float, poll_delay: float) -> None:
    """Wait until the job has a result or is no longer running, or `within` seconds passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.exists(result_key_prefix + job_id)
            pipe.exists(in_progress_key_prefix + job_id)
            finished, running = await pipe.execute()
        if finished or not running:
            return
        await asyncio.sleep(poll_delay)
