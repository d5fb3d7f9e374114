"""Rejected rows on their way to the `import_rejects` quarantine table, in bounded space.

A reject keeps at most MAX_RAW_BYTES of its line (the reason says how long the line was), and one
import's spool holds at most MAX_REJECT_SPOOL_BYTES: a small gzip of long broken lines would
otherwise fill the disk before the reject ratio could refuse the file. Once the cap is reached the
log stops taking rejects and says it is `full`; the import then fails without loading anything.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterable
from typing import IO

import asyncpg

from jobs.imports.csvscan import Reject, csv_line

# A quarantined line is for a person to read; megabytes of one field help no one.
MAX_RAW_BYTES = 4096
MAX_REJECT_SPOOL_BYTES = 64 << 20
"""What one import's rejects may occupy on disk (the CSV COPY reads them from)."""
# What a failed import (too many rejects) keeps: enough to see what is wrong with the file.
KEPT_WHEN_FAILED = 1000
REASONS_IN_MESSAGE = 5
_COLUMNS = ("import_id", "dataset", "file", "line_number", "reason", "raw_line")
_UTF8_CONTINUATION = 0b1100_0000


def kept_raw(raw: bytes) -> tuple[bytes, str]:
    """The part of a line a reject keeps, and what to add to its reason if it was cut."""
    if len(raw) <= MAX_RAW_BYTES:
        return raw, ""
    end = MAX_RAW_BYTES
    # Cut between characters: back off over UTF-8 continuation bytes (at most three).
    while end > MAX_RAW_BYTES - 3 and (raw[end] & _UTF8_CONTINUATION) == 0b1000_0000:
        end -= 1
    return raw[:end], f" (line of {len(raw)} bytes, first {end} kept)"


def stored_raw(raw: bytes) -> str:
    """The raw line as text PostgreSQL can hold: bad UTF-8 as \\xNN, NUL as the text \\x00."""
    return raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


class RejectLog:
    """Every reject of one import, spooled (to disk past a few MB) until it is written.

    `add` writes to the spool: call it off the event loop.
    """

    def __init__(self, *, import_id: uuid.UUID, dataset: str, file: str) -> None:
        self._prefix = (str(import_id), dataset, file)
        self._spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)
        self.cap = MAX_REJECT_SPOOL_BYTES
        self.count = 0
        """Rejects taken (all spooled)."""
        self.bytes = 0
        """Bytes spooled: never more than `cap`."""
        self.full = False
        """The last reject offered would have taken the spool past `cap`; no more are taken."""
        self._first_bytes = 0
        """Bytes spooled by the first KEPT_WHEN_FAILED rejects: what a failed import saves."""
        self.first: list[tuple[int, str]] = []
        """(line, reason) of the first rejects, for messages."""

    def add(self, rejects: Iterable[Reject]) -> None:
        for reject in rejects:
            if self.full:
                return
            raw, cut = kept_raw(reject.raw)
            line = csv_line([*self._prefix, reject.line, reject.reason + cut, stored_raw(raw)])
            if self.bytes + len(line) > self.cap:
                self.full = True
                return
            self._spool.write(line)
            self.bytes += len(line)
            self.count += 1
            if self.count <= KEPT_WHEN_FAILED:
                self.first.append((reject.line, reject.reason))
                self._first_bytes = self.bytes

    def reasons(self) -> str:
        """The first few rejects, for an error message."""
        first = self.first[:REASONS_IN_MESSAGE]
        shown = "; ".join(f"line {line}: {reason}" for line, reason in first)
        more = self.count - min(self.count, REASONS_IN_MESSAGE)
        return shown + (f"; and {more} more" if more else "")

    async def save(self, driver: asyncpg.Connection, *, failed: bool = False) -> None:
        """COPY the rejects into import_rejects: all, or the first ones of a failed import."""
        if not self.count:
            return
        self._spool.seek(0)
        source: IO[bytes] | _Prefix = self._spool
        if failed:
            source = _Prefix(self._spool, self._first_bytes)
        # A file-like source: asyncpg reads it in a thread (it would take bytes for a file name).
        await driver.copy_to_table(
            "import_rejects", source=source, columns=list(_COLUMNS), format="csv"
        )

    def close(self) -> None:
        self._spool.close()


class _Prefix:
    """The first `size` bytes of a file, as a file-like source for COPY."""

    def __init__(self, file: IO[bytes], size: int) -> None:
        self._file = file
        self._left = size

    def read(self, size: int = -1) -> bytes:
        wanted = self._left if size < 0 else min(size, self._left)
        data = self._file.read(wanted)
        self._left -= len(data)
        return data
