"""Patterns for CSV lines whose fields PostgreSQL can take as written, or after a trim and a case.

Parsing and validating a million rows in Python costs about as much as PostgreSQL's whole load, so
the import sends most lines to COPY with no Python-level work per field and looks closely only at
the others. Two levels:

- untouched: every field already is what the row rules (jobs.validation) would store: valid,
  trimmed, in the stored case. A block of such lines goes to COPY as it is.
- normalised: every field is valid once trimmed of ASCII spaces and mapped to the stored case
  (an e-mail lower-cased, a country upper-cased), and is ASCII wherever a case is mapped, where
  bytes.lower() and bytes.upper() are exactly str.lower() and str.upper(). Such lines are written
  out again from the fields the pattern found, a whole run of lines at a time (`Normalised`).

The patterns are a strict subset of the rules, never a second opinion: a line they refuse is
checked by the rules in Python, so refusing too much costs time but never changes the outcome.
tests/unit/test_csv_cleanlines.py checks that every line they accept gives exactly what the rules
store, and tests/integration/test_import_integrity.py that PostgreSQL stores the same.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

# Printable ASCII other than space, '"' and ',': needs neither quoting nor trimming.
_BARE = rb"[!#-+\--~]"
# _BARE without '@' and upper-case letters: an e-mail's local part that lower() leaves as it is.
_LOCAL = rb"[!#-+\--?\[-~]"
# _LOCAL without '.': one label of an e-mail's domain.
_LABEL = rb"[!#-+\-/-?\[-~]"
# The same with upper-case letters: lower() maps them one to one, ASCII to ASCII.
_LOCAL_ANY_CASE = rb"[!#-+\--?A-~]"
_LABEL_ANY_CASE = rb"[!#-+\-/-?A-~]"


def _opt(pattern: bytes) -> bytes:
    """`pattern` or nothing: (?:x)? in a form Python's re matches about twice as fast."""
    return rb"(?:" + pattern + rb"|)"


def _email(local: bytes, label: bytes) -> bytes:
    # 64 + 1 + 62 + 2 * 63 = 253 characters at most: within the 254 the rule allows.
    dot_label = rb"\." + label + rb"{1,62}"
    return local + rb"{1,64}@" + label + rb"{1,62}" + dot_label + _opt(dot_label)


# Dates that exist: days 29 and 30 in every month but February, 31 in the long months, February 29
# in leap years. Years 0001 and 9999 are left to the rules: an offset can move them out of range.
_MONTH_DAY = (
    rb"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
    rb"|(?:0[13-9]|1[0-2])-(?:29|30)"
    rb"|(?:0[13578]|1[02])-31)"
)
_LEAP_YEAR = rb"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)"
_DATE = rb"(?!0000|0001|9999)(?:[0-9]{4}-" + _MONTH_DAY + rb"|" + _LEAP_YEAR + rb"-02-29)"
_TIME = rb"[T ](?:[01][0-9]|2[0-3]):[0-5][0-9]" + _opt(rb":[0-5][0-9]" + _opt(rb"\.[0-9]{1,6}"))
# PostgreSQL refuses offsets past 15:59; real ones stop at 14:00.
_OFFSET = rb"(?:Z|[+-](?:0[0-9]|1[0-4])" + _opt(rb":?[0-5][0-9]") + rb")"
_TIMESTAMP = _DATE + _opt(_TIME + _opt(_OFFSET))

_POSITIVE = rb"[1-9][0-9]{0,17}"  # below 10**18, so always a bigint


@dataclass(frozen=True, slots=True)
class Field:
    """One column's field as the fast path takes it.

    Every pattern here matches values that start and end with printable ASCII other than space
    (so str.strip() of the value with ASCII spaces around it is the value) and hold no '"' unless
    doubled inside quotes, no CR, LF or NUL.
    """

    stored: bytes
    """The value as the rules store it, bare or in quotes; it never holds '"' or ','."""
    given: bytes | None = None
    """The value as a file may give it, which `case` maps to the stored form; None: `stored`."""
    case: Callable[[bytes], bytes] | None = None
    """bytes.lower or bytes.upper: the rules' str.lower() or str.upper() for `given`'s ASCII."""
    quoted: bytes | None = None
    """What may stand between quotes instead, '""' and ',' allowed (written out quoted)."""
    empty_is_null: bool = False
    """An empty field is NULL to the rules too (an optional reference)."""

    def untouched(self) -> bytes:
        inside = self.quoted if self.quoted is not None else self.stored
        return rb"(?:" + self.stored + rb'|"' + inside + rb'")'

    def normalised(self, quote_group: int) -> bytes:
        """Two groups: the opening quote (or nothing) and the value, trimmed of ASCII spaces."""
        given = self.given if self.given is not None else self.stored
        if self.quoted is not None:
            given = rb"(?(%d)%s|%s)" % (quote_group, self.quoted, given)
        return rb'(?:(")|) *(' + given + rb") *(?(%d)\")" % quote_group


_KEY = Field(_BARE + rb"{1,64}")

# Per dataset and column: the field as it may stand in a line the fast path takes.
# An empty optional field is bare and empty, which COPY reads as NULL; '""' would be ''.
FIELDS: dict[str, dict[str, Field]] = {
    "customers": {
        "external_id": _KEY,
        "email": Field(
            _email(_LOCAL, _LABEL), given=_email(_LOCAL_ANY_CASE, _LABEL_ANY_CASE), case=bytes.lower
        ),
        "full_name": Field(
            # Bare: printable ASCII at both ends (so strip() leaves it alone), anything but the
            # CSV delimiters, CR and NUL between. Bytes count at least as much as characters:
            # <= 200 bytes is <= 200 characters.
            _BARE + _opt(rb"[^\",\r\n\x00]{0,198}" + _BARE),
            # Quoted: commas and doubled quotes allowed inside, still printable ASCII at the ends.
            quoted=rb'[!#-~](?:[^"\r\n\x00]|""){0,196}[!#-~]',
        ),
        "country": Field(rb"[A-Z]{2}", given=rb"[A-Za-z]{2}", case=bytes.upper),
        "created_at": Field(_TIMESTAMP),
    },
    "accounts": {
        "id": Field(_POSITIVE),
        "customer_external_id": Field(_KEY.stored, empty_is_null=True),
        "currency": Field(rb"[A-Z]{3}", given=rb"[A-Za-z]{3}", case=bytes.upper),
        "balance_cents": Field(rb"(?:0|" + _POSITIVE + rb")"),
    },
}

# A line ends in LF or CRLF; no line is blank (a blank line is no record).
_NOT_BLANK = rb"(?!\r?\n)"


class CleanLines:
    """Recognises lines of one file (one dataset, one header) that need no Python-level checks."""

    def __init__(self, dataset: str, columns: Sequence[str], *, may_be_empty: frozenset[str]):
        """`may_be_empty`: columns whose empty field COPY may store as NULL as it is."""
        fields = [FIELDS[dataset][c] for c in columns]
        optional = [
            c in may_be_empty or f.empty_is_null for c, f in zip(columns, fields, strict=True)
        ]

        def maybe(pattern: bytes, empty: bool) -> bytes:
            return _opt(pattern) if empty else pattern

        untouched = b",".join(
            maybe(f.untouched(), o) for f, o in zip(fields, optional, strict=True)
        )
        self._untouched_block = re.compile(rb"(?:" + _NOT_BLANK + untouched + rb"\r?\n)*+")
        self._untouched_line = re.compile(untouched + rb"\r?")
        normalised = b",".join(
            maybe(f.normalised(2 * i + 1), o)
            for i, (f, o) in enumerate(zip(fields, optional, strict=True))
        )
        # Every line of a block gives one match: the groups of a normalised line, or no groups
        # (the newline's included) for any other.
        self._normalised = re.compile(
            rb"^(?:" + _NOT_BLANK + normalised + rb"\r?(\n)|.*\n)", re.MULTILINE
        )
        self._normalised_line = re.compile(normalised + rb"\r?")
        self._plan = [(f.case, f.quoted is not None) for f in fields]

    def whole_block(self, block: bytes) -> bool:
        """Every line of `block` (whole lines, each ending in a newline) is clean UTF-8 that COPY
        can take untouched. Stops at the first line that is not."""
        if self._untouched_block.fullmatch(block) is None:
            return False
        return block.isascii() or _is_utf8(block)

    def line(self, line: bytes) -> bool:
        """`line` (without its newline) is clean UTF-8 that COPY can take untouched."""
        if self._untouched_line.fullmatch(line) is None:
            return False
        return line.isascii() or _is_utf8(line)

    def normalised_line(self, line: bytes) -> bytes | None:
        """`line` (without its newline) as COPY is to read it; None: it is left to the rules."""
        match = self._normalised_line.fullmatch(line)
        if match is None or not (line.isascii() or _is_utf8(line)):
            return None
        return self._render([(*match.groups(default=b""), b"\n")])[:-1]

    def normalise(self, block: bytes, lines: Sequence[bytes]) -> Normalised:
        """`block`'s lines (`lines`: block.split(b"\\n"), without the empty piece after a final
        newline), to be sorted into those the patterns take and the others."""
        return Normalised(self, block, lines)

    def _sort(
        self, block: bytes, lines: Sequence[bytes]
    ) -> tuple[list[tuple[bytes, ...]], list[int]]:
        """The groups of each of `block`'s lines, and the indices of the lines not taken."""
        rows = self._normalised.findall(block)
        ends = [row[-1] for row in rows]
        others = _indices_of(ends, b"")
        if len(rows) < len(lines):  # the last line has no newline: never taken here
            others.append(len(rows))
        if not (block.isascii() or _is_utf8(block)):
            taken = sorted(set(range(len(rows))) - set(others))
            others = sorted({*others, *(i for i in taken if not _is_utf8(lines[i]))})
        return rows, others

    def _render(self, rows: Sequence[tuple[bytes, ...]]) -> bytes:
        """The lines COPY is to read for normalised lines' groups, each ending in \\n.

        Column by column, then line by line, all in C loops (map, zip, join): a Python loop
        over the lines would cost more than matching them.
        """
        groups = list(zip(*rows, strict=True))
        fields: list[Iterable[bytes]] = []
        for i, (case, quoted) in enumerate(self._plan):
            value: Iterable[bytes] = groups[2 * i + 1]
            if case is not None:
                value = map(case, value)
            if quoted:  # as it was: in quotes (with '""' inside) or bare
                quote = groups[2 * i]
                value = map(b"".join, zip(quote, value, quote, strict=True))
            fields.append(value)
        return b"\n".join(map(b",".join, zip(*fields, strict=True))) + b"\n"


class Normalised:
    """One block's lines: runs of lines the patterns took, between the lines left to the rules.

    Sorted WINDOW lines at a time, as they are asked for: a block is a few hundred kB, but one
    that holds a long quoted field is retried whole and may run to MAX_RECORD_BYTES, and the
    groups of all its lines at once would take several times its size.
    """

    WINDOW = 8192

    def __init__(self, clean: CleanLines, block: bytes, lines: Sequence[bytes]) -> None:
        self._clean = clean
        self._block = block
        self._lines = lines
        self._start = self._stop = 0
        """The lines sorted: lines[_start:_stop]."""
        self._offset = 0
        """Where line _start begins in the block."""
        self._rows: list[tuple[bytes, ...]] = []
        self._others: list[int] = []

    def taken_until(self, start: int) -> int:
        """The first line from `start` on (an index into the block's lines) that the patterns
        did not take, or the end of the lines sorted with `start` (at most the last line + 1).
        `start` never goes back."""
        if start >= len(self._lines):
            return len(self._lines)
        if not self._start <= start < self._stop:
            self._sort_from(start)
        at = bisect.bisect_left(self._others, start - self._start)
        return self._start + self._others[at] if at < len(self._others) else self._stop

    def render(self, start: int, stop: int) -> bytes:
        """Lines `start` to `stop` (all taken, sorted together) as COPY is to read them, each
        ending in \\n."""
        return self._clean._render(self._rows[start - self._start : stop - self._start])

    def _sort_from(self, start: int) -> None:
        assert start >= self._start, "lines are sorted front to back"
        lines, block = self._lines, self._block
        self._offset += sum(map(len, lines[self._start : start])) + start - self._start
        self._start, self._stop = start, min(len(lines), start + self.WINDOW)
        if self._offset == 0 and self._stop == len(lines):
            window = block
        else:
            end = self._offset + sum(map(len, lines[start : self._stop])) + self._stop - start
            window = block[self._offset : end]  # the last line's newline, if it has one
        self._rows, self._others = self._clean._sort(window, lines[start : self._stop])


def supported(dataset: str, columns: Sequence[str]) -> bool:
    return dataset in FIELDS and all(c in FIELDS[dataset] for c in columns)


def _indices_of(items: list[bytes], value: bytes) -> list[int]:
    found: list[int] = []
    at = -1
    try:
        while True:
            at = items.index(value, at + 1)
            found.append(at)
    except ValueError:
        return found


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
