"""Rejected rows on their way to the `import_rejects` quarantine table."""

from __future__ import annotations

import io
import tempfile
import uuid
from collections.abc import Iterable
from typing import IO

import asyncpg

from jobs.imports.csvscan import Reject, csv_line

# A quarantined line is for a person to read; megabytes of one field help no one.
MAX_RAW_CHARS = 64 * 1024
# What a failed import (too many rejects) keeps: enough to see what is wrong with the file.
KEPT_WHEN_FAILED = 1000
REASONS_IN_MESSAGE = 5
_COLUMNS = ("import_id", "dataset", "file", "line_number", "reason", "raw_line")


def stored_raw(raw: bytes) -> str:
    """The raw line as text PostgreSQL can hold: bad UTF-8 as \\xNN, NUL as the text \\x00."""
    text = raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    if len(text) > MAX_RAW_CHARS:
        text = f"{text[:MAX_RAW_CHARS]}... [cut: {len(raw)} bytes in all]"
    return text


class RejectLog:
    """Every reject of one import, spooled (to disk past a few MB) until it is written."""

    def __init__(self, *, import_id: uuid.UUID, dataset: str, file: str) -> None:
        self._prefix = (str(import_id), dataset, file)
        self._spool = tempfile.SpooledTemporaryFile(max_size=8 << 20)
        self.count = 0
        self.first: list[Reject] = []

    def add(self, rejects: Iterable[Reject]) -> None:
        for reject in rejects:
            self.count += 1
            if len(self.first) < KEPT_WHEN_FAILED:
                self.first.append(reject)
            self._spool.write(self._line(reject))

    def _line(self, reject: Reject) -> bytes:
        return csv_line([*self._prefix, reject.line, reject.reason, stored_raw(reject.raw)])

    def reasons(self) -> str:
        """The first few rejects, for an error message."""
        shown = "; ".join(f"line {r.line}: {r.reason}" for r in self.first[:REASONS_IN_MESSAGE])
        more = self.count - min(self.count, REASONS_IN_MESSAGE)
        return shown + (f"; and {more} more" if more else "")

    async def save(self, driver: asyncpg.Connection, *, failed: bool = False) -> None:
        """COPY the rejects into import_rejects: all, or the first ones of a failed import."""
        if not self.count:
            return
        # A file-like source either way: asyncpg takes bytes for a file name.
        source: IO[bytes] = self._spool
        if failed:
            source = io.BytesIO(b"".join(self._line(r) for r in self.first))
        else:
            self._spool.seek(0)
        await driver.copy_to_table(
            "import_rejects", source=source, columns=list(_COLUMNS), format="csv"
        )

    def close(self) -> None:
        self._spool.close()
