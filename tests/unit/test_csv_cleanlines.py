"""The clean-line patterns accept only lines the row rules accept unchanged."""

from __future__ import annotations

import csv
import random
import re
from datetime import UTC, datetime

import pytest

from jobs.imports.cleanlines import CleanLines, Normalised
from jobs.validation import RowRejected, parse_timestamp, validate_account, validate_customer

NOW = datetime(2026, 11, 21, tzinfo=UTC)
CUSTOMER_COLUMNS = ("external_id", "email", "full_name", "country", "created_at")
ACCOUNT_COLUMNS = ("id", "customer_external_id", "currency", "balance_cents")


@pytest.mark.parametrize(
    "line",
    [
        b"c1,ada@example.com,Ada Lovelace,GB,2020-01-01T00:00:17Z",
        b'c1,ada@example.com,"Ritchie, Jr.",GB,2020-01-01T00:00:17Z\r',
        b'"c1","ada@example.com","Ada ""The Countess"" L",GB,2024-02-29',
        b"c1,ada@mail.example.co,Zo\xc3\xab \tX,GB,2024-01-31 23:59:59.123456+14:00",
        b"c1,a.b+c@x.io,Ada,GB,2023-12-31T10:00-0530",
    ],
)
def test_clean_customer_lines(line: bytes) -> None:
    assert CleanLines("customers", CUSTOMER_COLUMNS, may_be_empty=frozenset()).line(line)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"c1,Ada@example.com,Ada,GB,2020-01-01", "upper case in the e-mail"),
        (b"c1,ada@example.com,Ada,gb,2020-01-01", "lower-case country"),
        (b" c1,ada@example.com,Ada,GB,2020-01-01", "space to trim"),
        (b"c1,ada@example.com,Ada ,GB,2020-01-01", "space to trim"),
        (b"c1,ada@example.com,\xc2\xa0Ada,GB,2020-01-01", "non-ASCII space to trim"),
        (b"c1,ada@example.com,Ada,GB,", "empty created_at: a default is due"),
        (b'c1,ada@example.com,Ada,GB,""', "quoted empty created_at"),
        (b"c1,ada@example.com,Ada,GB,2023-02-29", "no such day"),
        (b"c1,ada@example.com,Ada,GB,2024-04-31", "no such day"),
        (b"c1,ada@example.com,Ada,GB,0001-01-01T00:00+01:00", "before year 1 in UTC"),
        (b"c1,ada@example.com,Ada,GB,2020-01-01T10:00+15:00", "offset PostgreSQL may refuse"),
        (b"c1,ada@example.com,Ada,GB,20200101", "not the extended form"),
        (b"c1,ada@example.com,Ada,GB,2020-01-01,extra", "a field too many"),
        (b"c1,ada@example.com,Ada,GB", "a field too few"),
        (b"c1,ada@example.com,A\x00da,GB,2020-01-01", "NUL"),
        (b"c1,ada@example.com,A\xffda,GB,2020-01-01", "not UTF-8"),
        (b'c1,ada@example.com,"Ada,GB,2020-01-01', "open quote"),
        (b"c1,ada@example.com,Ada\rX,GB,2020-01-01", "bare carriage return"),
        (b"c1,ada@@example.com,Ada,GB,2020-01-01", "two @"),
        (b"c1,\xc4\xb0pek@example.com,Ada,GB,2020-01-01", "non-ASCII e-mail: lower() may grow it"),
        (b"c1,\xe2\x84\xaaate@example.com,Ada,GB,2020-01-01", "non-ASCII e-mail: Kelvin sign"),
        (b"c1,ada@example.com,A\xed\xa0\x80da,GB,2020-01-01", "an encoded surrogate"),
        (b"c1,ada@localhost,Ada,GB,2020-01-01", "no dot in the domain"),
        (b"," + b"x" * 65 + b",Ada,GB,2020-01-01", "long external_id"),
        (b"c1,ada@example.com," + b"x" * 201 + b",GB,2020-01-01", "long name"),
        (b"\\.", "COPY's end-of-data marker"),
    ],
)
def test_lines_left_to_the_rules(line: bytes, why: str) -> None:
    assert not CleanLines("customers", CUSTOMER_COLUMNS, may_be_empty=frozenset()).line(line), why


def test_empty_optional_field_only_where_null_is_wanted() -> None:
    line = b"c1,ada@example.com,Ada,GB,"
    assert CleanLines("customers", CUSTOMER_COLUMNS, may_be_empty=frozenset({"created_at"})).line(
        line
    )
    accounts = CleanLines("accounts", ACCOUNT_COLUMNS, may_be_empty=frozenset())
    assert accounts.line(b"7,,EUR,0")
    assert not accounts.line(b'7,"",EUR,0')
    assert not accounts.line(b"07,c1,EUR,0")
    assert not accounts.line(b"7,c1,EUR,-1")
    assert not accounts.line(b"7,c1,EUR,+1")
    assert not accounts.line(b"0,c1,EUR,1")
    assert not accounts.line(b"1" * 19 + b",c1,EUR,1")


def test_the_longest_clean_email_fits_the_rule_as_stored() -> None:
    email = "x" * 64 + "@" + "y" * 62 + "." + "z" * 62 + "." + "w" * 62
    line = b"c1," + email.encode() + b",Ada,GB,2020-01-01"
    assert CleanLines("customers", CUSTOMER_COLUMNS, may_be_empty=frozenset()).line(line)
    row = dict(zip(CUSTOMER_COLUMNS, line.decode().split(","), strict=True))
    assert validate_customer(row, now=NOW)["email"] == email
    assert len(email) == 253


def test_whole_block() -> None:
    clean = CleanLines("customers", CUSTOMER_COLUMNS, may_be_empty=frozenset())
    good = b"c1,ada@example.com,Ada,GB,2020-01-01\r\nc2,bob@example.com,Bob,DE,2020-01-02\n"
    assert clean.whole_block(good)
    assert not clean.whole_block(good + b"c3,bad,Bob,DE,2020-01-02\n")
    assert not clean.whole_block(good + b"c3,bob@example.com,B\xffb,DE,2020-01-02\n")


# Fuzzing: random lines from pieces that are valid, nearly valid and plainly wrong. Every line
# the patterns accept must pass the rules, and the rules must store exactly what COPY will read.

TEXT_PIECES = [
    "a", "Z", "0", ".", "-", "_", "+", "@", " ", "\t", '"', ",", "'", "é", "\u00a0", "\u3000",
    "\\", "x" * 60, "\x0b", "\x1f", "~", "[", "!",
    # Non-ASCII that normalising changes ('İ'.lower() is two code points, the Kelvin sign
    # lower-cases to ASCII "k"), and a lone surrogate (written as the bytes of its code point).
    "İ", "\u212a", "\ud800",
]  # fmt: skip
TIMESTAMPS = [
    "2020-01-01", "2020-01-01T00:00:17Z", "2024-02-29", "2023-02-29", "2100-02-29", "2000-02-29",
    "0001-01-01", "9999-12-31T23:59:59-05:00", "2020-12-31 23:59:59.5+14:00", "2020-06-31",
    "2020-01-01T24:00", "2020-01-01T10:00+1530", "2020-01-01T10:00:00.1234567", "",
    "2020-01-01T10:00:00+05", "2020-01-01T10:00:00-0000", " 2020-01-01", "2020-1-1",
]  # fmt: skip


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(TEXT_PIECES) for _ in range(rng.randint(0, 5)))


VALID = {
    "external_id": ["c1", "C-0000000001", "x" * 64, "a.b_c~!", "9"],
    "email": ["ada@example.com", "a.b+c@mail.example.co", "x@y.z", "o'neil@ex-ample.org"],
    "full_name": [
        "Ada",
        "Donald Ritchie, Jr.",
        "O'Neil",
        "Zoé Quinn",
        "A\tB",
        "x" * 200,
        "Z" + "é" * 99 + "x",
        "Ada \U0001f600 L",
    ],
    "country": ["GB", "DE"],
    "created_at": ["2020-01-01T00:00:17Z", "2024-02-29", "2020-12-31 23:59:59.5+14:00"],
    "id": ["1", "7", "9" * 18],
    "customer_external_id": ["c1", ""],
    "currency": ["EUR", "USD"],
    "balance_cents": ["0", "100", "9" * 18],
}


def random_field(rng: random.Random, column: str) -> str:
    if rng.random() < 0.8:
        value = rng.choice(VALID[column])
        if rng.random() < 0.5:  # spoil it a little
            at = rng.randint(0, len(value))
            value = value[:at] + rng.choice(TEXT_PIECES) + value[at:]
        return value
    if column == "created_at":
        return rng.choice(TIMESTAMPS)
    if column in ("country", "currency"):
        return rng.choice(["GB", "gb", "GBR", "EUR", "eu", "G", "12", "É€"])
    if column in ("id", "balance_cents"):
        return rng.choice(["7", "0", "-1", "+3", "007", "1" * 18, "1" * 19, "1.5", "x", ""])
    return random_text(rng)


def encode(rng: random.Random, value: str) -> str:
    if rng.random() < 0.3 or any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


@pytest.mark.parametrize(
    ("dataset", "columns"), [("customers", CUSTOMER_COLUMNS), ("accounts", ACCOUNT_COLUMNS)]
)
def test_every_accepted_line_passes_the_rules_unchanged(
    dataset: str, columns: tuple[str, ...]
) -> None:
    rng = random.Random(20261121)
    validate = validate_customer if dataset == "customers" else validate_account
    for may_be_empty in (frozenset(), frozenset({"created_at"})):
        clean = CleanLines(dataset, columns, may_be_empty=may_be_empty)
        accepted = non_ascii = 0
        for _ in range(25_000):
            fields = [random_field(rng, c) for c in columns]
            # surrogatepass: a lone surrogate becomes the bytes a careless encoder would write.
            line = ",".join(encode(rng, f) for f in fields).encode("utf-8", "surrogatepass")
            if not clean.line(line):
                continue
            accepted += 1
            non_ascii += not line.isascii()
            parsed = next(csv.reader([line.decode()], strict=True))
            row = dict(zip(columns, parsed, strict=True))
            try:
                values = validate(row, now=NOW)
            except RowRejected as exc:
                pytest.fail(f"accepted {line!r}, but the rules say {exc}")
            for column, text in row.items():
                stored = values[column]
                if column == "created_at":
                    if not text:  # NULL to COPY: only where the loader fills it in
                        assert column in may_be_empty, line
                    else:
                        assert stored == parse_timestamp(text, column), line
                elif column in ("id", "balance_cents"):
                    assert stored == int(text), line
                elif column == "customer_external_id" and not text:
                    assert stored is None, line
                else:
                    assert stored == text, line
        assert accepted > 1000  # the fuzzing reached the fast path
        assert non_ascii > 100 or dataset == "accounts"  # and with non-ASCII text


# Normalised lines: valid once trimmed of ASCII spaces and case-mapped. Each is written out again
# from the fields the pattern found; COPY must then store exactly what the rules would.


@pytest.mark.parametrize(
    ("line", "written"),
    [
        (
            b"c1,User1@Example.COM,Ada Lovelace,gb,2020-01-01T02:00:17+02:00",
            b"c1,user1@example.com,Ada Lovelace,GB,2020-01-01T02:00:17+02:00",
        ),
        (
            b'  c1 ,"  ADA@X.IO ","  Ritchie, Jr. ", Gb ,"2020-01-01 00:00:17"\r',
            b'c1,ada@x.io,"Ritchie, Jr.",GB,2020-01-01 00:00:17',
        ),
        (
            b'c1,a@b.co,"Ada ""The Countess"" L",GB,2024-02-29',
            b'c1,a@b.co,"Ada ""The Countess"" L",GB,2024-02-29',
        ),
        (b"c1,a@b.co,  Zo\xc3\xab Q ,GB,2024-02-29", b"c1,a@b.co,Zo\xc3\xab Q,GB,2024-02-29"),
    ],
)
def test_normalised_customer_lines(line: bytes, written: bytes) -> None:
    clean = CleanLines("customers", CUSTOMER_COLUMNS, may_be_empty=frozenset())
    assert clean.normalised_line(line) == written
    assert clean.line(written)  # what COPY gets is a line it could have taken untouched


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"c1,\xc4\xb0pek@example.com,Ada,GB,2020-01-01", "non-ASCII e-mail: lower() grows it"),
        (b"c1,\xe2\x84\xaaate@example.com,Ada,GB,2020-01-01", "Kelvin sign: lower() is ASCII"),
        (b"c1,ada@example.com,Ada,\xc3\xa9s,2020-01-01", "non-ASCII country"),
        (b"\tc1,ada@example.com,Ada,GB,2020-01-01", "a tab to trim"),
        (b"c1,ada@example.com,\xc2\xa0Ada,GB,2020-01-01", "a non-ASCII space to trim"),
        (b"c1,ada@example.com,Ada\xc2\xa0,GB,2020-01-01", "a non-ASCII space to trim"),
        (b"c1,ada@example.com,\xe3\x80\x80Ada,GB,2020-01-01", "an ideographic space to trim"),
        (b'c1,ada@example.com, "Ada",GB,2020-01-01', "a space before a quote"),
        (b'c1,ada@example.com,"Ada" ,GB,2020-01-01', "a space after a quote"),
        (b'c1,ada@example.com,"   ",GB,2020-01-01', "only spaces"),
        (b"c1,ada@example.com,   ,GB,2020-01-01", "only spaces"),
        (b"c1,ada@example.com,Ada,GB,   ", "only spaces in created_at"),
        (b'c1,ada@example.com,"Ada,GB,2020-01-01', "open quote"),
        (b'c1,"ada@example.com,Ada,GB,2020-01-01', "open quote"),
        (b'c1,ada@example.com",Ada,GB,2020-01-01', "stray quote"),
        (b"c1,ada@example.com,Ada,G B,2020-01-01", "a space inside a country"),
        (b"c1,ada@Ex ample.com,Ada,GB,2020-01-01", "a space inside an e-mail"),
        (b"c1,ada@example.com,Ada,GB,2020-01-01,", "a field too many"),
        (b"", "blank"),
        (b"\r", "blank"),
    ],
)
def test_lines_not_normalised(line: bytes, why: str) -> None:
    clean = CleanLines("customers", CUSTOMER_COLUMNS, may_be_empty=frozenset({"created_at"}))
    assert clean.normalised_line(line) is None, why


def test_normalised_accounts_and_empty_fields() -> None:
    accounts = CleanLines("accounts", ACCOUNT_COLUMNS, may_be_empty=frozenset())
    assert accounts.normalised_line(b' 7 ,,"eur", 0 ') == b"7,,EUR,0"
    assert accounts.normalised_line(b'7,"",EUR,0') is None  # '' is not NULL: left to the rules
    assert accounts.normalised_line(b"7,c1,EUR,-1") is None
    assert accounts.normalised_line(b"7,c1,EUR,+1") is None
    customers = CleanLines("customers", CUSTOMER_COLUMNS, may_be_empty=frozenset({"created_at"}))
    assert customers.normalised_line(b"c1,A@B.CO,Ada,gb,") == b"c1,a@b.co,Ada,GB,"
    strict = CleanLines("customers", CUSTOMER_COLUMNS, may_be_empty=frozenset())
    assert strict.normalised_line(b"c1,A@B.CO,Ada,gb,") is None


@pytest.mark.parametrize("window", [2, 3, Normalised.WINDOW])
def test_a_whole_block_is_sorted_line_by_line(window: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Normalised, "WINDOW", window)
    clean = CleanLines("customers", CUSTOMER_COLUMNS, may_be_empty=frozenset())
    lines = [
        b"c1,A@B.CO,Ada,gb,2020-01-01\r",
        b"c2,bad,Ada,GB,2020-01-01",
        b"",
        b"c3,a@b.co,A\xffda,GB,2020-01-01",  # bad UTF-8: the block is checked line by line
        b"c4,a@b.co, Ada ,GB,2020-01-01",
        b"c5,a@b.co,Ada,GB,2020-01-01",
    ]
    for end in (b"\n", b""):
        found = clean.normalise(b"\n".join(lines) + end, lines)
        taken: list[int] = []
        written, i = b"", 0
        while i < len(lines):  # front to back, as the scanner asks
            stop = found.taken_until(i)
            if stop > i:
                taken += range(i, stop)
                written += found.render(i, stop)
                i = stop
            else:
                i += 1
        # Without its newline, the last line is left to the rules (it may be cut short).
        keys = [b"c1", b"c4", b"c5"] if end else [b"c1", b"c4"]
        assert taken == ([0, 4, 5] if end else [0, 4])
        assert written == b"".join(key + b",a@b.co,Ada,GB,2020-01-01\n" for key in keys)


def shuffled_case(rng: random.Random, value: str) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in value)


def messy_field(rng: random.Random, column: str) -> str:
    """A field as a messy export writes it: the rules' cases, valid or not, in other cases and
    padded with spaces (ASCII or not) now and then."""
    value = rng.choice(VALID[column]) if rng.random() < 0.7 else random_field(rng, column)
    if rng.random() < 0.4:
        value = shuffled_case(rng, value)
    if rng.random() < 0.4:
        pad = ["", " ", "  ", "\t", "\u00a0", "\u3000"]
        value = rng.choice(pad) + value + rng.choice(pad)
    return value


def written_as_copy_reads_it(line: bytes) -> list[str | None]:
    """The fields of a written line as COPY's CSV format reads them: a bare empty field is NULL."""
    fields: list[str | None] = list(next(csv.reader([line.decode()], strict=True)))
    for i, raw in enumerate(re.split(rb',(?=(?:[^"]*"[^"]*")*[^"]*$)', line)):
        if raw == b"":
            fields[i] = None
        else:
            assert fields[i] != "", f"an empty quoted field: {line!r}"  # '' would not be NULL
    return fields


@pytest.mark.parametrize(
    ("dataset", "columns"), [("customers", CUSTOMER_COLUMNS), ("accounts", ACCOUNT_COLUMNS)]
)
def test_every_normalised_line_stores_what_the_rules_store(
    dataset: str, columns: tuple[str, ...]
) -> None:
    rng = random.Random(20261125)
    validate = validate_customer if dataset == "customers" else validate_account
    for may_be_empty in (frozenset(), frozenset({"created_at"})):
        clean = CleanLines(dataset, columns, may_be_empty=may_be_empty)
        accepted = rewritten = non_ascii = 0
        for _ in range(40_000):
            fields = [messy_field(rng, c) for c in columns]
            line = ",".join(encode(rng, f) for f in fields).encode("utf-8", "surrogatepass")
            if rng.random() < 0.2:
                line += b"\r"
            written = clean.normalised_line(line)
            if written is None:
                continue
            accepted += 1
            rewritten += written != line
            non_ascii += not line.isascii()
            parsed = next(csv.reader([line.decode()], strict=True))
            try:
                values = validate(dict(zip(columns, parsed, strict=True)), now=NOW)
            except RowRejected as exc:
                pytest.fail(f"took {line!r}, but the rules say {exc}")
            assert clean.line(written), written  # well-formed, nothing left to trim or map
            stored = written_as_copy_reads_it(written)
            for column, text in zip(columns, stored, strict=True):
                if text is None:  # NULL to COPY: the rules' None, or a default the loader fills
                    assert column in may_be_empty or values[column] is None, line
                elif column == "created_at":
                    assert parse_timestamp(text, column) == values[column], line
                elif column in ("id", "balance_cents"):
                    assert int(text) == values[column], line
                else:
                    assert text == values[column], line
        assert accepted > 2000  # the fuzzing reached the fast path
        assert rewritten > 1000  # and lines it had to rewrite
        assert non_ascii > 100 or dataset == "accounts"  # and non-ASCII text
