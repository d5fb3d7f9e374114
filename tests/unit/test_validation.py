from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobs.validation import (
    RowRejected,
    parse_timestamp,
    validate_account,
    validate_customer,
)

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def customer(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "external_id": "c-1",
        "email": "ada@example.com",
        "full_name": "Ada Lovelace",
        "country": "gb",
        "created_at": "2020-01-02T03:04:05Z",
    }
    row.update(overrides)
    return row


def account(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "7",
        "customer_external_id": "c-1",
        "currency": "eur",
        "balance_cents": "100",
    }
    row.update(overrides)
    return row


def rejected(validate: Any, row: dict[str, Any]) -> str:
    with pytest.raises(RowRejected) as caught:
        validate(row, now=NOW)
    return str(caught.value)


# customers


def test_valid_customer_is_normalised() -> None:
    row = customer(
        external_id="  c-1 ", email=" Ada@Example.COM ", full_name=" Ada ", country=" gb "
    )
    assert validate_customer(row, now=NOW) == {
        "external_id": "c-1",
        "email": "ada@example.com",
        "full_name": "Ada",
        "country": "GB",
        "created_at": datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC),
    }


@pytest.mark.parametrize("value", [None, "", "   ", "\t\u3000"])
def test_external_id_is_required(value: Any) -> None:
    assert rejected(validate_customer, customer(external_id=value)) == "external_id: required"


def test_external_id_length_counts_after_trimming() -> None:
    assert (
        validate_customer(customer(external_id=" " + "x" * 64 + " "), now=NOW)["external_id"]
        == "x" * 64
    )
    assert (
        rejected(validate_customer, customer(external_id="x" * 65))
        == "external_id: longer than 64 characters"
    )


def test_external_id_must_be_text() -> None:
    assert (
        rejected(validate_customer, customer(external_id=17))
        == "external_id: must be text, got an integer"
    )


@pytest.mark.parametrize(
    ("email", "reason"),
    [
        (None, "email: required"),
        ("", "email: required"),
        ("a" * 243 + "@example.com", "email: longer than 254 characters"),
        ("ada lovelace@example.com", "email: contains whitespace"),
        ("ada@exa\u00a0mple.com", "email: contains whitespace"),
        ("ada.example.com", "email: must hold exactly one @ with a name before it"),
        ("ada@@example.com", "email: must hold exactly one @ with a name before it"),
        ("a@b@example.com", "email: must hold exactly one @ with a name before it"),
        ("@example.com", "email: must hold exactly one @ with a name before it"),
        ("ada@localhost", "email: the domain must hold a dot between non-empty parts"),
        ("ada@", "email: the domain must hold a dot between non-empty parts"),
        ("ada@example.", "email: the domain must hold a dot between non-empty parts"),
        ("ada@.example.com", "email: the domain must hold a dot between non-empty parts"),
        ("ada@example..com", "email: the domain must hold a dot between non-empty parts"),
    ],
)
def test_email_rules(email: Any, reason: str) -> None:
    assert rejected(validate_customer, customer(email=email)) == reason


def test_email_at_the_length_limit_is_stored_lower_cased() -> None:
    email = "A" * 242 + "@example.com"
    assert len(email) == 254
    assert validate_customer(customer(email=email), now=NOW)["email"] == email.lower()


def test_email_length_counts_the_lower_cased_value() -> None:
    """'İ'.lower() is two code points: 150 of them make a 162-character e-mail 312 long."""
    email = "İ" * 150 + "@example.com"
    assert (len(email), len(email.lower())) == (162, 312)
    assert (
        rejected(validate_customer, customer(email=email))
        == "email: longer than 254 characters once lower-cased"
    )


def test_email_that_is_254_characters_once_lower_cased_is_accepted() -> None:
    email = "İ" * 100 + "a" * 42 + "@example.com"
    assert (len(email), len(email.lower())) == (154, 254)
    stored = validate_customer(customer(email=email), now=NOW)["email"]
    assert stored == email.lower()
    assert len(stored) == 254
    assert (
        rejected(validate_customer, customer(email="İ" + email))
        == "email: longer than 254 characters once lower-cased"
    )


def test_email_shape_is_checked_on_the_lower_cased_value() -> None:
    # The Kelvin sign lower-cases to an ASCII "k": what is stored is what the rules saw.
    assert validate_customer(customer(email="\u212aate@example.com"), now=NOW)["email"] == (
        "kate@example.com"
    )


@pytest.mark.parametrize("value", [None, "", "  "])
def test_full_name_is_required(value: Any) -> None:
    assert rejected(validate_customer, customer(full_name=value)) == "full_name: required"


def test_full_name_length() -> None:
    assert validate_customer(customer(full_name="é" * 200), now=NOW)["full_name"] == "é" * 200
    assert (
        rejected(validate_customer, customer(full_name="x" * 201))
        == "full_name: longer than 200 characters"
    )


# "ß".upper() is "SS" and "\ufb03".upper() is "FFI": the letters are checked before upper().
@pytest.mark.parametrize("value", ["G", "GBR", "G1", "ÅB", "g b", "ß", "\u212ak"])
def test_country_is_two_ascii_letters(value: str) -> None:
    assert (
        rejected(validate_customer, customer(country=value)) == "country: must be 2 ASCII letters"
    )


def test_country_is_required() -> None:
    assert rejected(validate_customer, customer(country=None)) == "country: required"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_empty_created_at_means_now(value: Any) -> None:
    assert validate_customer(customer(created_at=value), now=NOW)["created_at"] == NOW


def test_nul_byte_is_refused_by_name() -> None:
    assert (
        rejected(validate_customer, customer(full_name="Ada\x00"))
        == "full_name: contains a NUL byte"
    )


def test_first_broken_rule_in_column_order_is_reported() -> None:
    row = customer(external_id="", email="nope", country="X")
    assert rejected(validate_customer, row) == "external_id: required"
    row = customer(email="nope", country="X")
    assert rejected(validate_customer, row).startswith("email:")


def test_reasons_do_not_repeat_the_value() -> None:
    reason = rejected(validate_customer, customer(email="secret person@example.com"))
    assert "secret" not in reason


# text that cannot be stored

CUSTOMER_TEXT = ["external_id", "email", "full_name", "country", "created_at"]
ACCOUNT_TEXT = ["customer_external_id", "currency"]


@pytest.mark.parametrize("surrogate", ["\ud800", "\udbff", "\udc00", "\udfff", "\udcff"])
@pytest.mark.parametrize("column", CUSTOMER_TEXT)
def test_lone_surrogate_in_a_customer_text_field_is_a_reject(column: str, surrogate: str) -> None:
    for value in (surrogate, "c" + surrogate, surrogate + "x@example.com", " a" + surrogate):
        assert (
            rejected(validate_customer, customer(**{column: value}))
            == f"{column}: not valid text (lone surrogate)"
        )


@pytest.mark.parametrize("column", ACCOUNT_TEXT)
def test_lone_surrogate_in_an_account_text_field_is_a_reject(column: str) -> None:
    assert (
        rejected(validate_account, account(**{column: "c1\ud800"}))
        == f"{column}: not valid text (lone surrogate)"
    )


@pytest.mark.parametrize("column", ["id", "balance_cents"])
def test_lone_surrogate_in_an_integer_field_is_not_an_integer(column: str) -> None:
    assert rejected(validate_account, account(**{column: "1\ud800"})) == (
        f"{column}: must be an integer"
    )


def test_characters_outside_the_basic_plane_are_text() -> None:
    # JSON's "\ud83d\ude00" arrives as one code point, which UTF-8 encodes: not a surrogate.
    values = validate_customer(
        customer(full_name="Ada \U0001f600", external_id="c-\U00010348"), now=NOW
    )
    assert values["full_name"] == "Ada \U0001f600"
    assert values["external_id"] == "c-\U00010348"


def test_the_surrogate_reason_does_not_repeat_the_value() -> None:
    reason = rejected(validate_customer, customer(full_name="secret\ud800"))
    assert "secret" not in reason
    reason.encode("utf-8")  # the reason itself can be stored and logged


# Fuzzing: whatever the rules accept can be stored: it encodes as UTF-8 and, after every
# normalisation, fits its column's limit.

PIECES = [
    "a", "Z", ".", " ", "\u00a0", "İ", "İ" * 30, "\u0131", "ß", "ẞ", "ﬃ", "\u212a", "Σ", "ŉ",
    "\u0345", "\U0001f600", "\ud800", "\udc80", "\udfff", "x" * 40, "\x00",
]  # fmt: skip


def test_accepted_text_is_storable_and_within_its_limit() -> None:
    import random

    rng = random.Random(8)
    limits = {"external_id": 64, "email": 254, "full_name": 200}
    accepted = dict.fromkeys(limits, 0)
    for _ in range(20_000):
        column = rng.choice(list(limits))  # one field at a time, so its own rule is reached
        value = "".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12)))
        if column == "email" and rng.random() < 0.9:
            value = value.replace(" ", "").replace("\u00a0", "") + "@example.com"
        try:
            stored = validate_customer(customer(**{column: value}), now=NOW)[column]
        except RowRejected as exc:
            str(exc).encode("utf-8")
            continue
        accepted[column] += 1
        assert len(stored) <= limits[column], (column, value)
        stored.encode("utf-8")
    assert min(accepted.values()) > 1000, accepted


# timestamps


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-02-29", datetime(2024, 2, 29, tzinfo=UTC)),
        ("2024-01-01T10:00", datetime(2024, 1, 1, 10, tzinfo=UTC)),
        ("2024-01-01 10:00:30", datetime(2024, 1, 1, 10, 0, 30, tzinfo=UTC)),
        ("2024-01-01T10:00:30.5Z", datetime(2024, 1, 1, 10, 0, 30, 500000, tzinfo=UTC)),
        ("2024-01-01T10:00:30.123456Z", datetime(2024, 1, 1, 10, 0, 30, 123456, tzinfo=UTC)),
        ("2024-01-01T10:00:00+02:00", datetime(2024, 1, 1, 8, tzinfo=UTC)),
        ("2024-01-01T10:00:00+0530", datetime(2024, 1, 1, 4, 30, tzinfo=UTC)),
        ("2024-01-01T10:00:00-05", datetime(2024, 1, 1, 15, tzinfo=UTC)),
        ("2024-01-01T00:30:00+01:00", datetime(2023, 12, 31, 23, 30, tzinfo=UTC)),
    ],
)
def test_timestamps_accepted(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text, "created_at")
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text",
    [
        "yesterday",
        "20240101",
        "2024-01-01T10",
        "2024-01-01x10:00",
        "2024-01-01T10:00:00.1234567",
        "2024-W01-1",
        "01/02/2024",
        "2024-1-1",
        "1700000000",
        "2024-01-01T10:00:00+05:30:00",
    ],
)
def test_timestamp_shapes_refused(text: str) -> None:
    with pytest.raises(RowRejected, match=r"^created_at: not an ISO-8601 timestamp"):
        parse_timestamp(text, "created_at")


@pytest.mark.parametrize(
    "text",
    [
        "2023-02-29",
        "2024-04-31",
        "2024-13-01",
        "2024-00-10",
        "0000-01-01",
        "2024-01-01T24:00",
        "2024-01-01T10:60",
        "2024-01-01T10:00:60",
        "2024-01-01T10:00+24:00",
        "2024-01-01T10:00+05:60",
    ],
)
def test_impossible_dates_refused(text: str) -> None:
    with pytest.raises(RowRejected, match=r"^created_at: not a valid date and time$"):
        parse_timestamp(text, "created_at")


@pytest.mark.parametrize("text", ["0001-01-01T00:30+01:00", "9999-12-31T23:00-05:00"])
def test_timestamps_outside_years_1_to_9999_in_utc_refused(text: str) -> None:
    with pytest.raises(RowRejected, match=r"^created_at: out of range"):
        parse_timestamp(text, "created_at")


def test_customer_created_at_reason_names_the_field() -> None:
    assert rejected(validate_customer, customer(created_at="soon")).startswith(
        "created_at: not an ISO-8601 timestamp"
    )


# accounts


def test_valid_account_is_normalised() -> None:
    assert validate_account(account(id=" +007 ", currency=" eur "), now=NOW) == {
        "id": 7,
        "customer_external_id": "c-1",
        "currency": "EUR",
        "balance_cents": 100,
    }


def test_json_integers_are_taken_as_they_are() -> None:
    values = validate_account(account(id=9, balance_cents=0, customer_external_id=None), now=NOW)
    assert values == {"id": 9, "customer_external_id": None, "currency": "EUR", "balance_cents": 0}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "id: required"),
        ("", "id: required"),
        ("abc", "id: must be an integer"),
        ("1.5", "id: must be an integer"),
        ("+-5", "id: must be an integer"),
        ("--5", "id: must be an integer"),
        ("1_000", "id: must be an integer"),
        ("١٢", "id: must be an integer"),
        (1.5, "id: must be an integer, got a number with a fraction"),
        (2.0, "id: must be an integer, got a float"),
        (True, "id: must be an integer, got a boolean"),
        ([1], "id: must be an integer, got a list"),
        ("0", "id: must be a positive integer"),
        ("-3", "id: must be a positive integer"),
        (str(2**63), "id: out of range for a 64-bit integer"),
        (2**63, "id: out of range for a 64-bit integer"),
    ],
)
def test_account_id_rules(value: Any, reason: str) -> None:
    assert rejected(validate_account, account(id=value)) == reason


def test_largest_account_id_is_accepted() -> None:
    assert validate_account(account(id=str(2**63 - 1)), now=NOW)["id"] == 2**63 - 1


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("abc", "balance_cents: must be an integer"),
        (1.5, "balance_cents: must be an integer, got a number with a fraction"),
        ("-1", "balance_cents: must be >= 0"),
        (-1, "balance_cents: must be >= 0"),
        (None, "balance_cents: required"),
        (str(-(2**63) - 1), "balance_cents: out of range for a 64-bit integer"),
    ],
)
def test_balance_rules(value: Any, reason: str) -> None:
    assert rejected(validate_account, account(balance_cents=value)) == reason


@pytest.mark.parametrize("value", ["EU", "EURO", "E1R", "€UR", "\ufb03"])
def test_currency_is_three_ascii_letters(value: str) -> None:
    assert (
        rejected(validate_account, account(currency=value)) == "currency: must be 3 ASCII letters"
    )


@pytest.mark.parametrize("value", [None, "", "   "])
def test_owner_is_optional(value: Any) -> None:
    assert (
        validate_account(account(customer_external_id=value), now=NOW)["customer_external_id"]
        is None
    )


def test_owner_must_be_text() -> None:
    assert (
        rejected(validate_account, account(customer_external_id=12))
        == "customer_external_id: must be text, got an integer"
    )


def reference_timestamp(text: str) -> datetime | str:
    """The rule spelled out field by field, to check the fast parse against."""
    from datetime import timezone

    from jobs.validation import ISO_TIMESTAMP

    match = ISO_TIMESTAMP.fullmatch(text)
    assert match is not None
    part = match.group
    try:
        tz = UTC
        if part("sign"):
            if int(part("off_m") or 0) > 59:
                raise ValueError("offset minutes")
            minutes = int(part("off_h")) * 60 + int(part("off_m") or 0)
            tz = timezone(timedelta(minutes=-minutes if part("sign") == "-" else minutes))
        parsed = datetime(
            int(part("year")),
            int(part("month")),
            int(part("day")),
            int(part("hour") or 0),
            int(part("minute") or 0),
            int(part("second") or 0),
            int((part("fraction") or "0").ljust(6, "0")),
            tzinfo=tz,
        )
    except ValueError:
        return "created_at: not a valid date and time"
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        return "created_at: out of range (years 1 to 9999 in UTC)"


OFFSETS = ["Z", "+00:00", "-00", "+05", "+0530", "+14:00", "-12:00", "+23:59", "+24:00", "+05:60"]
OFFSETS += ["-0000", "+1500", "+0099"]


def test_timestamp_parse_agrees_with_the_rule_spelled_out() -> None:
    import random

    rng = random.Random(11)
    for _ in range(50_000):
        text = "-".join(
            [
                rng.choice(["0000", "0001", "0999", "2000", "2023", "2024", "2100", "9999"]),
                rng.choice(["00", "01", "02", "04", "12", "13"]),
                rng.choice(["00", "01", "28", "29", "30", "31", "32"]),
            ]
        )
        if rng.random() < 0.8:
            text += rng.choice("T ") + rng.choice(["00", "23", "24"]) + ":"
            text += rng.choice(["00", "59", "60"])
            if rng.random() < 0.7:
                text += ":" + rng.choice(["00", "59", "60"])
                if rng.random() < 0.5:
                    text += "." + "123456"[: rng.randint(1, 6)]
            if rng.random() < 0.7:
                text += rng.choice(OFFSETS)
        try:
            got: datetime | str = parse_timestamp(text, "created_at")
        except RowRejected as exc:
            got = str(exc)
        assert got == reference_timestamp(text), text
