"""Row rules for the datasets: pure functions, no I/O.

Each validator takes one input row (CSV fields as text, or a JSON object's values) and returns the
values to store, or raises RowRejected with a one-line reason naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

BIGINT_MAX = 2**63 - 1


class RowRejected(ValueError):
    """One input row breaks a rule; the reason names the field."""


def _text(row: Mapping[str, Any], field: str, *, required: bool = True) -> str:
    value = row.get(field)
    if value is None:
        if required:
            raise RowRejected(f"{field}: required")
        return ""
    if not isinstance(value, str):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RowRejected(f"{field}: must be text, got {type(value).__name__}")
        value = str(value)
    if "\x00" in value:
        raise RowRejected(f"{field}: contains a NUL byte")
    return value.strip()


def _integer(row: Mapping[str, Any], field: str) -> int:
    value = row.get(field)
    if value is None or value == "":
        raise RowRejected(f"{field}: required")
    if isinstance(value, bool) or isinstance(value, float):
        raise RowRejected(f"{field}: must be an integer, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not (text.lstrip("+-").isascii() and text.lstrip("+-").isdigit()):
            raise RowRejected(f"{field}: must be an integer, got {value[:40]!r}")
        value = int(text)
    if not isinstance(value, int):
        raise RowRejected(f"{field}: must be an integer, got {type(value).__name__}")
    if not -BIGINT_MAX - 1 <= value <= BIGINT_MAX:
        raise RowRejected(f"{field}: out of range for a 64-bit integer")
    return value


def _letters(row: Mapping[str, Any], field: str, length: int) -> str:
    value = _text(row, field)
    if len(value) != length or not (value.isascii() and value.isalpha()):
        raise RowRejected(f"{field}: must be {length} ASCII letters, got {value[:20]!r}")
    return value.upper()


def _email(row: Mapping[str, Any]) -> str:
    value = _text(row, "email")
    if not value:
        raise RowRejected("email: required")
    if len(value) > 254:
        raise RowRejected("email: longer than 254 characters")
    if any(ch.isspace() for ch in value):
        raise RowRejected("email: contains a space")
    local, at, domain = value.partition("@")
    if not at or "@" in domain or not local:
        raise RowRejected(f"email: must hold exactly one @ with a name before it, got {value!r}")
    labels = domain.split(".")
    if len(labels) < 2 or not all(labels):
        raise RowRejected(f"email: domain must hold a dot, got {domain!r}")
    return value.lower()


def parse_timestamp(value: str, field: str) -> datetime:
    """ISO-8601; no offset means UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RowRejected(f"{field}: not an ISO-8601 timestamp: {value[:40]!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def validate_customer(row: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
    external_id = _text(row, "external_id")
    if not 1 <= len(external_id) <= 64:
        raise RowRejected("external_id: must be 1 to 64 characters")
    full_name = _text(row, "full_name")
    if not 1 <= len(full_name) <= 200:
        raise RowRejected("full_name: must be 1 to 200 characters")
    created_raw = _text(row, "created_at", required=False)
    return {
        "external_id": external_id,
        "email": _email(row),
        "full_name": full_name,
        "country": _letters(row, "country", 2),
        "created_at": parse_timestamp(created_raw, "created_at") if created_raw else now,
    }


def validate_account(row: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
    account_id = _integer(row, "id")
    if account_id <= 0:
        raise RowRejected(f"id: must be a positive integer, got {account_id}")
    balance = _integer(row, "balance_cents")
    if balance < 0:
        raise RowRejected(f"balance_cents: must be >= 0, got {balance}")
    owner = _text(row, "customer_external_id", required=False)
    return {
        "id": account_id,
        "customer_external_id": owner or None,
        "currency": _letters(row, "currency", 3),
        "balance_cents": balance,
    }
