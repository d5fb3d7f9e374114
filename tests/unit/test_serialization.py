"""Jobs and results are JSON in Redis; a failure reads back as JobError with its message."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from uuid import UUID

from jobs.errors import InvalidPayload
from worker.errors import JobError
from worker.serialization import deserialize, serialize


def test_job_payload_is_plain_json() -> None:
    raw = serialize({"t": 1, "f": "import_file", "a": [], "k": {"dataset": "customers"}})
    assert json.loads(raw) == {"t": 1, "f": "import_file", "a": [], "k": {"dataset": "customers"}}


def test_exception_result_round_trips_as_job_error() -> None:
    raw = serialize({"s": False, "r": InvalidPayload("invalid payload: dataset: unknown")})
    assert json.loads(raw)["r"] == {
        "__error__": "InvalidPayload",
        "message": "invalid payload: dataset: unknown",
    }
    back = deserialize(raw)["r"]
    assert isinstance(back, JobError)
    assert back.kind == "InvalidPayload"
    assert str(back) == "InvalidPayload: invalid payload: dataset: unknown"
    # A JobError read back and stored again keeps its original kind.
    assert deserialize(serialize(back)).kind == "InvalidPayload"


def test_values_json_lacks_become_text() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    ident = UUID("12345678-1234-5678-1234-567812345678")
    assert json.loads(serialize({"when": when, "id": ident})) == {
        "when": "2026-01-02 03:04:05+00:00",
        "id": "12345678-1234-5678-1234-567812345678",
    }


def test_user_dict_with_other_keys_is_not_mistaken_for_an_error() -> None:
    value = {"__error__": "x", "message": "y", "extra": 1}
    assert deserialize(serialize(value)) == value
