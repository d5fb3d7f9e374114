"""Patterns for CSV lines that PostgreSQL can take exactly as they are written.

Parsing and validating a million rows in Python costs about as much as PostgreSQL's whole load, so
the import sends most lines to COPY untouched and looks closely only at the others. A line may go
through untouched when its fields already are what the row rules (jobs.validation) would store:
valid, trimmed, in the stored case, and read the same way by PostgreSQL's COPY as by Python.

The patterns are a strict subset of the rules, never a second opinion: a line they refuse is
checked by the rules in Python, so refusing too much costs time but never changes the outcome.
tests/unit/test_csv_cleanlines.py checks that every line they accept passes the rules unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Printable ASCII other than space, '"' and ',': needs neither quoting nor trimming.
_BARE = rb"[!#-+\--~]"
# _BARE without '@' and upper-case letters: an e-mail's local part that lower() leaves as it is.
_LOCAL = rb"[!#-+\--?\[-~]"
# _LOCAL without '.': one label of an e-mail's domain.
_LABEL = rb"[!#-+\-/-?\[-~]"


def _maybe_quoted(body: bytes) -> bytes:
    """`body` bare or inside quotes; `body` never holds '"', so quoting cannot change the value."""
    return rb"(?:" + body + rb'|"' + body + rb'")'


_NAME = (
    # Bare: printable ASCII at both ends (so strip() leaves it alone), anything but the CSV
    # delimiters, CR and NUL between. Bytes count at least as much as characters: <= 200 bytes
    # is <= 200 characters.
    rb"(?:" + _BARE + rb"(?:[^\",\r\n\x00]{0,198}" + _BARE + rb")?"
    # Quoted: commas and doubled quotes allowed inside, still printable ASCII at the ends.
    rb'|"[!#-~](?:[^"\r\n\x00]|""){0,196}[!#-~]")'
)

# 64 + 1 + 62 + 2 * 63 = 253 characters at most: within the 254 the rule allows.
_EMAIL = _maybe_quoted(_LOCAL + rb"{1,64}@" + _LABEL + rb"{1,62}(?:\." + _LABEL + rb"{1,62}){1,2}")

# Dates that exist: days 29 and 30 in every month but February, 31 in the long months, February 29
# in leap years. Years 0001 and 9999 are left to the rules: an offset can move them out of range.
_MONTH_DAY = (
    rb"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
    rb"|(?:0[13-9]|1[0-2])-(?:29|30)"
    rb"|(?:0[13578]|1[02])-31)"
)
_LEAP_YEAR = rb"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)"
_DATE = rb"(?!0000|0001|9999)(?:[0-9]{4}-" + _MONTH_DAY + rb"|" + _LEAP_YEAR + rb"-02-29)"
_TIME = rb"[T ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?"
# PostgreSQL refuses offsets past 15:59; real ones stop at 14:00.
_OFFSET = rb"(?:Z|[+-](?:0[0-9]|1[0-4])(?::?[0-5][0-9])?)"
_TIMESTAMP = _maybe_quoted(_DATE + rb"(?:" + _TIME + _OFFSET + rb"?)?")

_POSITIVE = rb"[1-9][0-9]{0,17}"  # below 10**18, so always a bigint

# Per dataset and column: the field as it may stand in a line that COPY takes untouched.
# An empty optional field is bare and empty, which COPY reads as NULL; '""' would be ''.
FIELDS: dict[str, dict[str, bytes]] = {
    "customers": {
        "external_id": _maybe_quoted(_BARE + rb"{1,64}"),
        "email": _EMAIL,
        "full_name": _NAME,
        "country": _maybe_quoted(rb"[A-Z]{2}"),
        "created_at": _TIMESTAMP,
    },
    "accounts": {
        "id": _maybe_quoted(_POSITIVE),
        "customer_external_id": rb"(?:" + _maybe_quoted(_BARE + rb"{1,64}") + rb")?",
        "currency": _maybe_quoted(rb"[A-Z]{3}"),
        "balance_cents": _maybe_quoted(rb"(?:0|" + _POSITIVE + rb")"),
    },
}


def _field(dataset: str, column: str, *, optional: frozenset[str]) -> bytes:
    body = FIELDS[dataset][column]
    return rb"(?:" + body + rb")?" if column in optional else body


class CleanLines:
    """Recognises lines of one file (one dataset, one header) that COPY can take untouched."""

    def __init__(self, dataset: str, columns: Sequence[str], *, may_be_empty: frozenset[str]):
        """`may_be_empty`: columns whose empty field COPY may store as NULL as it is."""
        fields = b",".join(_field(dataset, c, optional=may_be_empty) for c in columns)
        self._block = re.compile(rb"^" + fields + rb"\r?\n", re.MULTILINE)
        self._line = re.compile(fields + rb"\r?")

    def whole_block(self, block: bytes) -> bool:
        """Every line of `block` (whole lines, each ending in a newline) is clean UTF-8."""
        if self._block.sub(b"", block):
            return False
        return block.isascii() or _is_utf8(block)

    def line(self, line: bytes) -> bool:
        """`line` (without its newline) is clean UTF-8."""
        if self._line.fullmatch(line) is None:
            return False
        return line.isascii() or _is_utf8(line)


def supported(dataset: str, columns: Sequence[str]) -> bool:
    return dataset in FIELDS and all(c in FIELDS[dataset] for c in columns)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
