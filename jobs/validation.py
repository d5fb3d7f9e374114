"""Row rules for the datasets: pure functions, no I/O.

Each validator takes one input row (CSV fields as text, or a JSON object's values) and returns the
values to store, or raises RowRejected with a one-line reason naming the field. Reasons never
repeat the value: the import keeps the raw line beside the reason, an upsert caller holds the row,
and a value (an e-mail address) has no place in logs or job results.

Two rules hold for every text field, wherever the row came from:
- A value is stored as UTF-8, so a lone surrogate ("\\ud800": valid JSON, a valid Python str, but
  no UTF-8 form) is a reject of its row. Left to the driver it fails the whole statement.
- A length limit applies to the value as it will be stored, after trimming and case mapping:
  "İ".lower() is two code points, so an e-mail can grow past its limit when lower-cased.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

BIGINT_MAX = 2**63 - 1
MAX_EXTERNAL_ID = 64
MAX_EMAIL = 254
MAX_FULL_NAME = 200

# The extended ISO-8601 form that tools write (2026-11-21, 2026-11-21T09:30:00Z,
# 2026-11-21 09:30:00.250+01:00). datetime.fromisoformat() also takes week dates, basic forms
# and any separator character; a documented subset keeps the rule the same wherever it is checked.
ISO_TIMESTAMP = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"(?:[T ](?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})"
    r"(?::(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]{1,6}))?)?"
    r"(?P<offset>Z|(?P<sign>[+-])(?P<off_h>[0-9]{2})(?::?(?P<off_m>[0-9]{2}))?)?)?"
)
_INTEGER = re.compile(r"[+-]?[0-9]+")
_WHITESPACE = re.compile(r"\s")  # in a str pattern, exactly what str.isspace() calls space


class RowRejected(ValueError):
    """One input row breaks a rule; the reason names the field."""


def _text(row: Mapping[str, Any], field: str, *, required: bool = True) -> str:
    """The field's text, trimmed; "" when it is absent and optional."""
    value = row.get(field)
    if value is None:
        value = ""
    if not isinstance(value, str):
        # A number where text belongs changes form on the way (1.0 becomes "1.0"): refuse it.
        raise RowRejected(f"{field}: must be text, got {_type_name(value)}")
    if "\x00" in value:
        raise RowRejected(f"{field}: contains a NUL byte")
    if not value.isascii():  # isascii() reads a flag; encode() is the quickest full check
        try:
            value.encode()  # UTF-8; naming it ("utf-8") costs twice as much
        except UnicodeEncodeError:  # UTF-8 encodes every code point but the surrogates
            raise RowRejected(f"{field}: not valid text (lone surrogate)") from None
    value = value.strip()
    if required and not value:
        raise RowRejected(f"{field}: required")
    return value


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction" if not value.is_integer() else "a float"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _integer(row: Mapping[str, Any], field: str) -> int:
    value = row.get(field)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise RowRejected(f"{field}: required")
        if "\x00" in text or not _INTEGER.fullmatch(text):
            raise RowRejected(f"{field}: must be an integer")
        value = int(text)
    elif value is None:
        raise RowRejected(f"{field}: required")
    elif isinstance(value, bool) or not isinstance(value, int):
        raise RowRejected(f"{field}: must be an integer, got {_type_name(value)}")
    if not -BIGINT_MAX - 1 <= value <= BIGINT_MAX:
        raise RowRejected(f"{field}: out of range for a 64-bit integer")
    return value


def _letters(row: Mapping[str, Any], field: str, length: int) -> str:
    value = _text(row, field)
    # Checked before upper(), which keeps an ASCII letter one letter; checked after, "ß" would
    # pass as "SS" and "ﬃ" as "FFI".
    if len(value) != length or not (value.isascii() and value.isalpha()):
        raise RowRejected(f"{field}: must be {length} ASCII letters")
    return value.upper()


def _email(row: Mapping[str, Any]) -> str:
    given = _text(row, "email")
    value = given.lower()  # the stored form: every rule below is checked on it
    if len(value) > MAX_EMAIL:
        grown = " once lower-cased" if len(given) <= MAX_EMAIL else ""
        raise RowRejected(f"email: longer than {MAX_EMAIL} characters{grown}")
    if _WHITESPACE.search(value):
        raise RowRejected("email: contains whitespace")
    local, at, domain = value.partition("@")
    if not at or "@" in domain or not local:
        raise RowRejected("email: must hold exactly one @ with a name before it")
    labels = domain.split(".")
    if len(labels) < 2 or not all(labels):
        raise RowRejected("email: the domain must hold a dot between non-empty parts")
    return value


def parse_timestamp(value: str, field: str) -> datetime:
    """Extended ISO-8601, date alone or date and time; no offset means UTC. Returned in UTC."""
    match = ISO_TIMESTAMP.fullmatch(value)
    if match is None:
        raise RowRejected(f"{field}: not an ISO-8601 timestamp (e.g. 2026-11-21T09:30:00Z)")
    try:
        # fromisoformat() reads every string of this shape as the fields say (and 20 times
        # faster than building the datetime here), except that it takes an offset's minutes
        # up to 99.
        if (match.group("off_m") or "00") > "59":
            raise ValueError("offset minutes")
        parsed = datetime.fromisoformat(value)
    except ValueError:  # 2026-02-30, 25:00, an offset of a day or more
        raise RowRejected(f"{field}: not a valid date and time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise RowRejected(f"{field}: out of range (years 1 to 9999 in UTC)") from None


def validate_customer(row: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
    """customers: the rules in the order of the columns; an empty created_at means `now`."""
    # external_id and full_name are stored as trimmed: their limits count exactly that.
    external_id = _text(row, "external_id")
    if len(external_id) > MAX_EXTERNAL_ID:
        raise RowRejected(f"external_id: longer than {MAX_EXTERNAL_ID} characters")
    email = _email(row)
    full_name = _text(row, "full_name")
    if len(full_name) > MAX_FULL_NAME:
        raise RowRejected(f"full_name: longer than {MAX_FULL_NAME} characters")
    country = _letters(row, "country", 2)
    created_raw = _text(row, "created_at", required=False)
    return {
        "external_id": external_id,
        "email": email,
        "full_name": full_name,
        "country": country,
        "created_at": parse_timestamp(created_raw, "created_at") if created_raw else now,
    }


def validate_account(row: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
    """accounts: the rules that need no database; the owner's existence is checked by the loader."""
    account_id = _integer(row, "id")
    if account_id <= 0:
        raise RowRejected("id: must be a positive integer")
    owner = _text(row, "customer_external_id", required=False)
    currency = _letters(row, "currency", 3)
    balance = _integer(row, "balance_cents")
    if balance < 0:
        raise RowRejected("balance_cents: must be >= 0")
    return {
        "id": account_id,
        "customer_external_id": owner or None,
        "currency": currency,
        "balance_cents": balance,
    }
