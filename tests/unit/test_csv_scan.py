from __future__ import annotations

import csv
import io
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from jobs.errors import InputFileError
from jobs.imports import csvscan
from jobs.imports.cleanlines import CleanLines, Normalised
from jobs.imports.csvscan import Reject, Scanner, csv_line
from jobs.validation import parse_timestamp, validate_customer

NOW = datetime(2026, 11, 21, tzinfo=UTC)
COLUMNS = ("external_id", "email", "full_name", "country", "created_at")


def scanner(
    *, fast: bool = True, columns: tuple[str, ...] = COLUMNS, keep_raw: bool = False
) -> Scanner:
    clean = CleanLines("customers", columns, may_be_empty=frozenset()) if fast else None
    return Scanner(
        columns=columns,
        check=lambda row: validate_customer(row, now=NOW),
        clean=clean,
        keep_raw=keep_raw,
    )


def scan(
    data: bytes, *, fast: bool = True, pieces: int = 1, seed: int = 0
) -> tuple[Scanner, bytes, list[Reject]]:
    """Feed `data` in `pieces` random-sized parts, as the reader would."""
    s = scanner(fast=fast)
    rng = random.Random(seed)
    cuts = (
        sorted(rng.sample(range(1, len(data)), min(pieces - 1, len(data) - 1)))
        if pieces > 1
        else []
    )
    out = io.BytesIO()
    rejects: list[Reject] = []
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        part = s.feed(data[start:end])
        out.write(part.data)
        rejects += part.rejects
    part = s.finish()
    out.write(part.data)
    rejects += part.rejects
    return s, out.getvalue(), rejects


def copy_rows(data: bytes) -> list[list[str]]:
    """What COPY's CSV reader would see (the empty bare field is NULL there; "" here)."""
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


GOOD = [
    b"c1,ada@example.com,Ada Lovelace,GB,2020-01-01T00:00:17Z",
    b'c2,bob@example.com,"Ritchie, Jr.",DE,2020-01-02T00:00:00Z',
    b"c3,cy@example.com,Cy,FR,2020-01-03",
]


def test_clean_lines_go_to_copy_untouched() -> None:
    data = b"\n".join(GOOD) + b"\n"
    s, out, rejects = scan(data)
    assert out == data
    assert rejects == []
    assert (s.rows, s.forwarded, s.line) == (3, 3, 5)
    assert [s.line_of(rec) for rec in (1, 2, 3)] == [(2, 1), (3, 1), (4, 1)]


def test_crlf_becomes_lf_for_copy() -> None:
    data = b"\r\n".join(GOOD) + b"\r\n"
    _, out, _ = scan(data)
    assert out == b"\n".join(GOOD) + b"\n"


def test_last_line_without_newline() -> None:
    s, out, _ = scan(b"\n".join(GOOD))
    assert s.rows == 3
    assert copy_rows(out)[-1][0] == "c3"


def test_lines_needing_a_trim_or_a_case_are_written_from_their_fields() -> None:
    data = b'  c1 , Ada@Example.com ,"  Ritchie, Jr. ",gb,"2020-01-01T01:00:00+01:00"\r\n'
    s, out, rejects = scan(data)
    assert rejects == []
    assert out == b'c1,ada@example.com,"Ritchie, Jr.",GB,2020-01-01T01:00:00+01:00\n'
    assert s.forwarded == 1


def test_lines_needing_more_are_rewritten_from_the_validated_values() -> None:
    # A tab is trimmed by the rules, but not by the patterns.
    data = b"\tc1,Ada@Example.com,Ada,gb,2020-01-01T01:00:00+01:00\n"
    s, out, rejects = scan(data)
    assert rejects == []
    assert out == b'"c1","ada@example.com","Ada","GB",2020-01-01T00:00:00+00:00\n'
    assert s.forwarded == 1


def test_rejects_carry_line_numbers_reasons_and_raw_bytes() -> None:
    data = (
        b"\n".join(
            [
                GOOD[0],
                b"c9,not-an-email,Bad,GB,2020-01-01",  # line 3
                b"",  # line 4: blank, skipped
                GOOD[1],  # line 5
                b"c8,x@example.com,Bad,GB,2020-02-30\r",  # line 6
                GOOD[2],  # line 7
            ]
        )
        + b"\n"
    )
    s, out, rejects = scan(data)
    assert rejects == [
        Reject(
            3,
            "email: must hold exactly one @ with a name before it",
            b"c9,not-an-email,Bad,GB,2020-01-01",
        ),
        Reject(6, "created_at: not a valid date and time", b"c8,x@example.com,Bad,GB,2020-02-30"),
    ]
    assert [row[0] for row in copy_rows(out)] == ["c1", "c2", "c3"]
    assert (s.rows, s.forwarded) == (5, 3)
    assert [s.line_of(rec) for rec in (1, 2, 3)] == [(2, 1), (5, 1), (7, 1)]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"c1,ada@example.com,Ada,GB", "has 4 fields; the header has 5"),
        (b"c1,ada@example.com,Ada,GB,2020-01-01,x", "has 6 fields; the header has 5"),
        (b"c1,ada@example.com,A\x00da,GB,2020-01-01", "holds a NUL byte"),
        (
            b"c1,ada@example.com,A\xffda,GB,2020-01-01",
            "not valid UTF-8 (byte 21 of the line is 0xff)",
        ),
        (
            b'c1,ada@example.com,"Ada"x,GB,2020-01-01',
            "not valid CSV: a quoted field must end at a comma or at the end of the line",
        ),
        (
            b"c1,ada@example.com,Ada\rX,GB,2020-01-01",
            "not valid CSV: a carriage return inside an unquoted field",
        ),
        (b" ", "has 1 fields; the header has 5"),
    ],
)
def test_broken_records_are_rejected_and_the_rest_loads(line: bytes, reason: str) -> None:
    data = GOOD[0] + b"\n" + line + b"\n" + GOOD[1] + b"\n"
    s, out, rejects = scan(data)
    assert rejects == [Reject(3, reason, line)]
    assert [row[0] for row in copy_rows(out)] == ["c1", "c2"]
    assert s.rows == 3


def test_a_quoted_field_may_span_lines() -> None:
    data = (
        b"\n".join(
            [
                GOOD[0],
                b'c5,e@example.com,"two',  # line 3, the record ends on line 4
                b'lines",GB,2020-01-01',
                b'c6,f@example.com,"bad',  # line 5: a rule breaks, both lines are the raw record
                b'name",gbr,2020-01-01',
                GOOD[1],  # line 7
            ]
        )
        + b"\n"
    )
    s, out, rejects = scan(data)
    assert rejects == [
        Reject(
            5, "country: must be 2 ASCII letters", b'c6,f@example.com,"bad\nname",gbr,2020-01-01'
        )
    ]
    rows = copy_rows(out)
    assert rows[1][:3] == ["c5", "e@example.com", "two\nlines"]
    assert [s.line_of(rec) for rec in (1, 2, 3)] == [(2, 1), (3, 2), (7, 1)]


def test_a_quote_never_closed_fails_the_file() -> None:
    data = GOOD[1] + b'\nc5,e@example.com,"open,GB,2020-01-01\n' + GOOD[0] + b"\n" + GOOD[2]
    with pytest.raises(
        InputFileError, match=r"^file: line 3: a quoted field opened on this line is never closed$"
    ):
        scan(data)


def test_a_record_running_on_too_long_fails_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csvscan, "MAX_RECORD_BYTES", 1000)
    data = GOOD[0] + b'\nc5,e@example.com,"open' + b"\nmore" * 500
    with pytest.raises(InputFileError, match=r"^file: line 3: a record runs on for more than"):
        scan(data, pieces=50)


def test_a_huge_field_is_a_reject_not_a_crash() -> None:
    big = b"x" * (10 << 20)
    _, out, rejects = scan(
        GOOD[0] + b"\nc9,e@example.com," + big + b",GB,2020-01-01\n" + GOOD[1], pieces=40
    )
    assert [(r.line, r.reason) for r in rejects] == [
        (3, "not valid CSV: a field is longer than 131072 characters")
    ]
    assert [row[0] for row in copy_rows(out)] == ["c1", "c2"]


def messy_file(rng: random.Random, lines: int) -> bytes:
    choices = [
        *GOOD,
        b"c4,ADA@example.com , Ada ,gb,2020-01-01T10:00+02:00",
        b"c5,bad,Ada,GB,2020-01-01",
        b'c6,e@example.com,"multi\nline ""quoted""",GB,',
        b"c7,e@example.com,Ada,GB,2020-02-30",
        b"c8,e@example.com,A\xffda,GB,2020-01-01",
        b"c9,e@example.com,Ada,GB",
        b"",
        b'c10,e@example.com,"x"y,GB,2020-01-01',
        b"c11,e@example.com,Zo\xc3\xab,GB,2020-01-01",
        # Valid once trimmed and case-mapped: taken by the patterns and written out again.
        b'c12,User12@Example.COM,"  Ritchie, Jr. ", de ,2020-01-01T02:00:17+02:00',
        b'"c13","E@X.IO",  Zo\xc3\xab Q ,"pl","2019-12-31T19:00:34-05:00"',
        b"c14,e@EXAMPLE.com,Ada\xc2\xa0,GB,2020-01-01",  # a non-ASCII space: left to the rules
        b"c15,e@EXAMPLE.com,Ada,G\xc3\xa9,2020-01-01",
        b'c16,"e@Example.com",Ada,"gb" ,2020-01-01',  # a space after a closing quote
        b'c17,e@example.com,Ada "A" L,gb,2020-01-01',  # quotes inside a bare field
    ]
    return b"".join(rng.choice(choices) + rng.choice([b"\n", b"\r\n"]) for _ in range(lines))


@pytest.mark.parametrize("window", [3, Normalised.WINDOW])
@pytest.mark.parametrize("seed", range(12))
def test_outcome_does_not_depend_on_the_fast_path_or_on_block_boundaries(
    seed: int, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Normalised, "WINDOW", window)  # lines sorted a few at a time
    rng = random.Random(seed)
    data = messy_file(rng, 400)
    slow, slow_out, slow_rejects = scan(data, fast=False)
    for pieces in (1, 7, 300):
        fast, fast_out, fast_rejects = scan(data, fast=True, pieces=pieces, seed=seed)
        assert fast_rejects == slow_rejects
        assert (fast.rows, fast.forwarded, fast.line) == (slow.rows, slow.forwarded, slow.line)
        # The fast path writes lines otherwise; both must store the same values.
        assert stored(fast_out) == stored(slow_out)
        assert [fast.line_of(r) for r in range(1, fast.forwarded + 1)] == [
            slow.line_of(r) for r in range(1, slow.forwarded + 1)
        ]


def stored(data: bytes) -> list[list[Any]]:
    """The values COPY stores for `data` (created_at: the instant its text names)."""
    return [
        [*row[:4], parse_timestamp(row[4], "created_at") if row[4] else None]
        for row in copy_rows(data)
    ]


def test_csv_line_round_trips() -> None:
    values = ['a "quoted", text', None, 7, datetime(2020, 1, 1, tzinfo=UTC), "", "two\nlines"]
    line = csv_line(values)
    assert line == b'"a ""quoted"", text",,7,2020-01-01T00:00:00+00:00,"","two\nlines"\n'
    assert copy_rows(line) == [
        ['a "quoted", text', "", "7", "2020-01-01T00:00:00+00:00", "", "two\nlines"]
    ]


def test_kept_raw_records_are_the_forwarded_records_as_written() -> None:
    """With keep_raw, each block says which records it forwarded and their bytes: runs of
    one-line records, a record spanning lines on its own, whole clean blocks as they are."""
    rules_only = b"  c4 , Ada@Example.com ,Ada,gb,2020-01-01"
    two_lines = b'c5,e@example.com,"two\nlines",GB,2020-01-01'
    data = b"\n".join(
        [GOOD[0], b"c9,bad,Bad,GB,2020-01-01", two_lines, rules_only, GOOD[2] + b"\r", b""]
    )
    s = scanner(keep_raw=True)
    kept = s.feed(data).raw + s.finish().raw
    assert kept == [
        csvscan.RawRecords(1, GOOD[0] + b"\n", 1),
        csvscan.RawRecords(2, two_lines + b"\n", 1),
        csvscan.RawRecords(3, rules_only + b"\n" + GOOD[2] + b"\n", 2),
    ]
    clean = b"\r\n".join(GOOD) + b"\r\n"
    s = scanner(keep_raw=True)
    assert s.feed(clean).raw == [csvscan.RawRecords(1, clean, 3)]
    assert scanner().feed(clean).raw == []  # not kept unless asked
