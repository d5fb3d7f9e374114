"""Turning an import file's lines into COPY input and rejected rows with their line numbers.

Pure: bytes in, bytes out, no I/O. The import feeds the file's content after the header row in
blocks; for each block it gets the CSV to send to COPY and the rows it rejected.

Blocks whose every line is clean (cleanlines.py) go to COPY as they are, which is what makes a
clean file load at COPY's speed. Lines that are clean once trimmed and case-mapped (a messy
export's mixed-case e-mails, lower-case countries, padded names) are written out again from the
fields the patterns found, a run of lines at a time and with no Python-level work per line. Every
other line is read by the csv module (quoted fields may span lines), checked against the row
rules, and either rejected with its line number and raw bytes or written out again from the
validated values. COPY therefore only ever sees well-formed CSV with valid values, so the import's
outcome never depends on where COPY would have stopped.
"""

from __future__ import annotations

import bisect
import csv
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jobs.errors import InputFileError
from jobs.imports.cleanlines import CleanLines
from jobs.validation import RowRejected

# A record still open after this many bytes is a quote left open, not data.
MAX_RECORD_BYTES = 64 << 20

RowCheck = Callable[[dict[str, str]], dict[str, Any]]
"""The row rules for one CSV record (column -> field); raises RowRejected."""


@dataclass(frozen=True, slots=True)
class Reject:
    line: int
    reason: str
    raw: bytes
    """The record as it was in the file, without its line terminator."""


@dataclass(frozen=True, slots=True)
class RawRecords:
    """The raw bytes of forwarded records `first`, `first + 1`, ...: `count` lines, each ending
    in \\n (or \\r\\n), one record each; or (`count` 1) one record that may span lines, then \\n."""

    first: int
    data: bytes
    count: int


@dataclass(slots=True)
class Scanned:
    """What one block gave: CSV for COPY (\\n line ends) and the rows it rejected."""

    data: bytes = b""
    rejects: list[Reject] = field(default_factory=list)
    raw: list[RawRecords] = field(default_factory=list)
    """With `keep_raw`: the records forwarded, as they were in the file."""


def csv_field(value: Any) -> str:
    """A value as COPY's CSV format reads it back: NULL is an empty bare field."""
    if value is None:
        return ""
    if isinstance(value, str):
        return '"' + value.replace('"', '""') + '"'
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def csv_line(values: Sequence[Any]) -> bytes:
    return (",".join(csv_field(v) for v in values) + "\n").encode("utf-8")


_CSV_REASONS = {
    "',' expected after '\"'": "a quoted field must end at a comma or at the end of the line",
    "new-line character seen in unquoted field": "a carriage return inside an unquoted field",
    "field larger than field limit": "a field is longer than 131072 characters",
}


def _csv_reason(message: str) -> str:
    for start, reason in _CSV_REASONS.items():
        if message.startswith(start):
            return f"not valid CSV: {reason}"
    return f"not valid CSV: {message}"


class Scanner:
    """One file's records after the header: counts them, rejects some, writes CSV for COPY.

    Records forwarded to COPY are numbered 1, 2, ... (`rec`, the staging table's identity);
    `line_of(rec)` maps one back to its line in the file for rejects found later by SQL, and with
    `keep_raw` each Scanned carries the forwarded records' raw bytes (RawRecords) for them.
    """

    def __init__(
        self,
        *,
        columns: Sequence[str],
        check: RowCheck,
        clean: CleanLines | None,
        name: str = "file",
        first_line: int = 2,
        keep_raw: bool = False,
    ) -> None:
        self.columns = tuple(columns)
        self.name = name
        """The file's name, for messages."""
        self._check = check
        self._clean = clean
        self.line = first_line
        """The number of the next line to read."""
        self.rows = 0
        """Records read, rejected ones included (a blank line is not a record)."""
        self.forwarded = 0
        """Records sent to COPY."""
        self._anchor_recs: list[int] = []
        self._anchor_lines: list[int] = []
        self._spans: dict[int, int] = {}
        self._parts: list[bytes] = []
        self._held = 0
        self._retry_at = 0
        self._keep_raw = keep_raw
        self._kept: list[RawRecords] = []
        self._run: list[bytes] = []
        """Raw one-line records forwarded, not yet in _kept: `_run_count` lines in pieces."""
        self._run_count = 0
        self._run_first = 0

    # feeding

    def feed(self, data: bytes) -> Scanned:
        """Take the next bytes of the file; whole lines are processed, the rest is kept."""
        if not data:
            return Scanned()
        self._parts.append(data)
        self._held += len(data)
        if b"\n" not in data or self._held < self._retry_at:
            self._check_held()
            return Scanned()
        buffer = b"".join(self._parts)
        cut = buffer.rfind(b"\n") + 1
        out = self._process(buffer[:cut], final=False)
        rest = buffer[cut:]
        if out.leftover:
            rest = out.leftover + rest
            # An open quoted field: wait for twice as much before parsing the record again,
            # so a long record costs linear, not quadratic, time.
            self._retry_at = 2 * len(rest)
        else:
            self._retry_at = 0
        self._parts = [rest] if rest else []
        self._held = len(rest)
        self._check_held()
        return out.scanned

    def finish(self) -> Scanned:
        """The end of the file: process what is left, however it ends."""
        buffer = b"".join(self._parts)
        self._parts, self._held = [], 0
        if not buffer:
            return Scanned()
        return self._process(buffer, final=True).scanned

    def _check_held(self) -> None:
        if self._held > MAX_RECORD_BYTES:
            raise InputFileError(
                f"{self.name}: line {self.line}: a record runs on for more than "
                f"{MAX_RECORD_BYTES >> 20} MiB; is a quote left open?"
            )

    # mapping COPY's records back to lines

    def line_of(self, rec: int) -> tuple[int, int]:
        """The line where forwarded record `rec` starts, and how many lines it spans."""
        at = bisect.bisect_right(self._anchor_recs, rec) - 1
        return self._anchor_lines[at] + rec - self._anchor_recs[at], self._spans.get(rec, 1)

    def _forwarded(self, count: int, *, line: int, span: int = 1) -> None:
        rec = self.forwarded + 1
        if not self._anchor_recs or (line - rec != self._anchor_lines[-1] - self._anchor_recs[-1]):
            self._anchor_recs.append(rec)
            self._anchor_lines.append(line)
        if span > 1:
            self._spans[rec] = span
            # The next record starts `span` lines on: its offset differs, so it anchors anew.
        self.forwarded += count

    # keeping the raw bytes of forwarded records (before _forwarded() counts them)

    def _keep_lines(self, raw: bytes, count: int) -> None:
        """`count` one-line records, joined by \\n, without their last line terminator."""
        if not self._run:
            self._run_first = self.forwarded + 1
        self._run.append(raw)
        self._run_count += count

    def _keep(self, data: bytes, count: int) -> None:
        self._flush_run()
        self._kept.append(RawRecords(self.forwarded + 1, data, count))

    def _flush_run(self) -> None:
        if self._run:
            data = b"\n".join(self._run) + b"\n"
            self._kept.append(RawRecords(self._run_first, data, self._run_count))
            self._run = []
            self._run_count = 0

    # processing

    def _process(self, block: bytes, *, final: bool) -> _Processed:
        processed = self._scan(block, final=final)
        if self._keep_raw:
            self._flush_run()
            processed.scanned.raw, self._kept = self._kept, []
        return processed

    def _scan(self, block: bytes, *, final: bool) -> _Processed:
        clean = self._clean
        terminated = block.endswith(b"\n")
        if clean is not None and terminated and clean.whole_block(block):
            count = block.count(b"\n")
            if self._keep_raw:
                self._keep(block, count)
            self._forwarded(count, line=self.line)
            self.rows += count
            self.line += count
            data = block.replace(b"\r\n", b"\n") if b"\r" in block else block
            return _Processed(Scanned(data=data))
        lines = block.split(b"\n")
        if terminated:
            lines.pop()
        normalised = clean.normalise(block, lines) if clean is not None else None
        pieces: list[bytes] = []
        rejects: list[Reject] = []
        i = 0
        while i < len(lines):
            if normalised is not None:
                stop = normalised.taken_until(i)
                if stop > i:
                    pieces.append(normalised.render(i, stop))
                    self._forward_lines(lines, i, stop)
                    i = stop
                    continue
            line = lines[i]
            if line in (b"", b"\r"):
                self.line += 1
                i += 1
                continue
            used = self._record(
                lines, i, terminated=terminated, final=final, out=pieces, rejects=rejects
            )
            if used == 0:
                leftover = b"\n".join(lines[i:]) + (b"\n" if terminated else b"")
                return _Processed(Scanned(b"".join(pieces), rejects), leftover)
            i += used
        return _Processed(Scanned(b"".join(pieces), rejects))

    def _forward_lines(self, lines: list[bytes], start: int, stop: int) -> None:
        """Count `lines[start:stop]`, one-line records the patterns took, as forwarded."""
        count = stop - start
        if self._keep_raw:
            raw = b"\n".join(lines[start:stop])
            if b"\r" in raw:
                raw = raw.replace(b"\r\n", b"\n").removesuffix(b"\r")
            self._keep_lines(raw, count)
        self._forwarded(count, line=self.line)
        self.rows += count
        self.line += count

    def _record(
        self,
        lines: list[bytes],
        start: int,
        *,
        terminated: bool,
        final: bool,
        out: list[bytes],
        rejects: list[Reject],
    ) -> int:
        """Read one record from `lines[start:]`; return how many lines it used, 0 if unfinished."""
        used = 0
        ran_out = False
        last = len(lines) - 1

        def source() -> Iterator[str]:
            nonlocal used, ran_out
            for j in range(start, len(lines)):
                used += 1
                ending = "\n" if terminated or j < last else ""
                yield lines[j].decode("utf-8", "surrogateescape") + ending
            ran_out = True

        fields: list[str] = []
        error: str | None = None
        try:
            fields = next(csv.reader(source(), strict=True), [])
        except csv.Error as exc:
            if ran_out:
                if not final:
                    return 0
                raise InputFileError(
                    f"{self.name}: line {self.line}: a quoted field opened on this line is never "
                    "closed"
                ) from None
            error = str(exc)
        raw = b"\n".join(lines[start : start + used]).removesuffix(b"\r")
        line = self.line
        self.line += used
        self.rows += 1
        reason = self._reason(raw, fields, error)
        values: dict[str, Any] = {}
        if reason is None:
            try:
                values = self._check(dict(zip(self.columns, fields, strict=True)))
            except RowRejected as exc:
                reason = str(exc)
        if reason is not None:
            rejects.append(Reject(line=line, reason=reason, raw=raw))
            return used
        out.append(csv_line([values[c] for c in self.columns]))
        if self._keep_raw and used == 1:
            self._keep_lines(raw, 1)
        elif self._keep_raw:
            self._keep(raw + b"\n", 1)
        self._forwarded(1, line=line, span=used)
        return used

    def _reason(self, raw: bytes, fields: list[str], error: str | None) -> str | None:
        """Why the record cannot be read as a row at all, before any rule is checked."""
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"not valid UTF-8 (byte {exc.start + 1} of the line is 0x{raw[exc.start]:02x})"
        if b"\x00" in raw:
            return "holds a NUL byte"
        if error is not None:
            return _csv_reason(error)
        if len(fields) != len(self.columns):
            return f"has {len(fields)} fields; the header has {len(self.columns)}"
        return None


@dataclass(slots=True)
class _Processed:
    scanned: Scanned
    leftover: bytes = b""
    """The start of a record that continues past the block."""
