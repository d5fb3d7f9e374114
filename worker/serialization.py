"""Jobs and results travel as JSON, so any language can enqueue and an operator can read Redis.

A failed job's exception becomes `{"__error__": class name, "message": text}`; reading it back
gives a `JobError` carrying the same name and text.
"""

from __future__ import annotations

import json
from typing import Any

from worker.errors import JobError

_ERROR_KEY = "__error__"


def _default(value: Any) -> Any:
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
