"""From an app's request to arq's job record: the payload checked against its job's model, the
record's bytes, and whether a failed job can be enqueued again as it was."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from jobs.catalogue import BY_NAME
from jobs.errors import InvalidPayload, payload_error
from jobs.spec import JobSpec
from worker.errors import CannotRetry, JobNotFound
from worker.serialization import serialize
from worker.status import JobState

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
    """arq's job record (`t` try, `f` function, `a` args, `k` kwargs, `et` enqueue time) as JSON."""
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
