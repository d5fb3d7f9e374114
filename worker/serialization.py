"""Jobs and results travel as JSON, so any language can enqueue and an operator can read Redis.

A failed job's exception becomes `{"__error__": class name, "message": text}`; reading it back
gives a `JobError` carrying the same name and text.

The worker reads job records with `deserialize_job`, which checks their fields' types first: arq
trusts them (a `"t": "1"` raised TypeError inside its loop and ended the worker process, and the
record then ended the next worker too). A record that fails the check fails as its own job, with
an `InvalidJob` reason, and the worker goes on.
"""

from __future__ import annotations

import json
import math
from typing import Any

from arq.jobs import DeserializationError

from worker.errors import InvalidJob, JobError

_ERROR_KEY = "__error__"


def _default(value: Any) -> Any:
    if isinstance(value, DeserializationError) and isinstance(value.__cause__, InvalidJob):
        value = value.__cause__  # arq wraps what the deserializer raised; keep our reason
    if isinstance(value, JobError):
        return {_ERROR_KEY: value.kind, "message": value.message}
    if isinstance(value, BaseException):
        return {_ERROR_KEY: type(value).__name__, "message": str(value)}
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    # Dates, UUIDs, decimals, paths: their text form is what an app in another language expects.
    return str(value)


def _object_hook(value: dict[str, Any]) -> Any:
    if _ERROR_KEY in value and set(value) <= {_ERROR_KEY, "message"}:
        return JobError(str(value[_ERROR_KEY]), str(value.get("message", "")))
    return value


def serialize(value: Any) -> bytes:
    return json.dumps(value, default=_default, separators=(",", ":")).encode()


def deserialize(raw: bytes) -> Any:
    return json.loads(raw, object_hook=_object_hook)


# Largest enqueue time accepted (ms): year 9999. Anything larger cannot be a date.
_MAX_TIME_MS = 253_402_300_799_999


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_job_record(record: Any) -> None:
    """Raise InvalidJob naming the first field of arq's job record with a wrong type."""
    if not isinstance(record, dict):
        raise InvalidJob(f"invalid job record: a JSON object expected, got {type(record).__name__}")
    problems = []
    for field, what in (("f", "function name"), ("a", "args"), ("k", "kwargs"), ("t", "try")):
        if field not in record:
            problems.append(f"'{field}' ({what}) is missing")
    function, args, kwargs = record.get("f"), record.get("a", []), record.get("k", {})
    tries, enqueued = record.get("t", 1), record.get("et", 0)
    if "f" in record and not (isinstance(function, str) and function):
        problems.append("'f' must be a non-empty string")
    if not isinstance(args, list):
        problems.append("'a' must be an array")
    if not isinstance(kwargs, dict):
        problems.append("'k' must be an object")
    if tries is not None and not (_is_int(tries) and tries >= 1):  # arq itself writes null
        problems.append("'t' must be null or an integer of at least 1")
    if "et" not in record:
        problems.append("'et' (enqueue time) is missing")
    elif not (
        (_is_int(enqueued) or (isinstance(enqueued, float) and math.isfinite(enqueued)))
        and 0 <= enqueued <= _MAX_TIME_MS
    ):
        problems.append("'et' must be a time in milliseconds since the epoch")
    if problems:
        raise InvalidJob("invalid job record: " + "; ".join(problems))


def deserialize_job(raw: bytes) -> Any:
    """The worker's reader of job records: `deserialize`, then the record's fields checked."""
    try:
        record = deserialize(raw)
    except ValueError as exc:  # JSON and UTF-8 errors both
        raise InvalidJob(f"invalid job record: not JSON ({type(exc).__name__})") from None
    if isinstance(record, dict) and "s" in record:
        return record  # a result, read through the worker's pool: not a job record
    check_job_record(record)
    return record
