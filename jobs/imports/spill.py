"""The raw bytes of the records an import sent to COPY, kept on disk until SQL has judged them.

Some rejects are only found after COPY, by SQL (accounts naming no customer). Their raw lines must
be the bytes that were imported, not the file read again by name (it may have been replaced
meanwhile), so the scan keeps every forwarded record's bytes here, as it reads them. Only imports
that check references keep them; the file holds what the staging table holds, in the file's form.
"""

from __future__ import annotations

import bisect
import tempfile
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType

from jobs.imports.csvscan import RawRecords, Reject

_FETCH_CHUNK = 10_000


class RecordSpill:
    """Forwarded records by number (1, 2, ...: the staging table's `rec`), in a temporary file."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()
        self._first: list[int] = []
        self._count: list[int] = []
        self._offset: list[int] = [0]

    @property
    def size(self) -> int:
        """Bytes kept on disk."""
        return self._offset[-1]

    def add(self, kept: Iterable[RawRecords]) -> None:
        """Blocking (a file write): called from the read-ahead thread."""
        self._file.seek(self._offset[-1])  # after a fetch()
        for records in kept:
            self._file.write(records.data)
            self._first.append(records.first)
            self._count.append(records.count)
            self._offset.append(self._offset[-1] + len(records.data))

    def fetch(self, recs: Iterable[int]) -> dict[int, bytes]:
        """The raw bytes of records `recs`, without their line terminators. Blocking."""
        found: dict[int, bytes] = {}
        segment, lines = -1, [b""]
        for rec in sorted(recs):
            at = bisect.bisect_right(self._first, rec) - 1
            if at < 0 or rec - self._first[at] >= self._count[at]:
                raise KeyError(f"record {rec} was not kept")
            if at != segment:
                segment, lines = at, self._read(at)
            found[rec] = lines[rec - self._first[at]].removesuffix(b"\r")
        return found

    def _read(self, at: int) -> list[bytes]:
        self._file.seek(self._offset[at])
        data = self._file.read(self._offset[at + 1] - self._offset[at])[:-1]
        # One record alone may span lines; otherwise one line per record.
        return [data] if self._count[at] == 1 else data.split(b"\n")

    def rejects(
        self, recs: Iterable[int], *, line_of: Callable[[int], tuple[int, int]], reason: str
    ) -> Iterator[Reject]:
        """Rejects for records SQL refused, in line order, with their kept bytes; read a chunk at
        a time as they are taken (by RejectLog.add, in a thread)."""
        ordered = sorted(recs)  # records were forwarded in file order: this is line order too
        for start in range(0, len(ordered), _FETCH_CHUNK):
            chunk = ordered[start : start + _FETCH_CHUNK]
            raw = self.fetch(chunk)
            for rec in chunk:
                yield Reject(line=line_of(rec)[0], reason=reason, raw=raw[rec])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordSpill:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
