"""Streaming an import file through the scanner into COPY.

The file is read and scanned one block ahead in a thread (readahead.py); that thread also writes
each block's rejects to their spool and, when SQL will judge rows later, the forwarded records' raw
bytes to the record spill. Nothing on the event loop touches a file, nor an object in a bucket
(jobs/imports/objects.py: its GET is read in blocks by the same thread).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import asyncpg

from jobs.errors import InputFileError
from jobs.imports.csvinput import Header, InputReader, Source, read_header
from jobs.imports.csvscan import Scanned, Scanner
from jobs.imports.readahead import ReadAhead
from jobs.imports.rejects import RejectLog
from jobs.imports.spill import RecordSpill
from jobs.registry import Dataset

# One COPY per batch: a COPY that fails (a conflict in insert mode) is noticed when its batch
# ends, since asyncpg reads the whole source before it reports the server's error.
BATCH_BYTES = 16 << 20


def open_input(path: Path | Source, *, name: str, dataset: Dataset) -> tuple[InputReader, Header]:
    """The file opened and its header row read and checked. Blocking: run it in a thread."""
    reader = InputReader(path, name=name)
    try:
        return reader, read_header(reader, dataset)
    except BaseException:
        reader.close()
        raise


def input_header(path: Path | Source, *, name: str, dataset: Dataset) -> Header:
    """The file's header row, checked (the file is closed again). Blocking: run it in a thread."""
    reader, header = open_input(path, name=name, dataset=dataset)
    reader.close()
    return header


async def copy_input(
    driver: asyncpg.Connection,
    *,
    path: Path | Source,
    name: str,
    dataset: Dataset,
    columns: Sequence[str],
    table: str,
    scanner: Scanner,
    rejects: RejectLog,
    spill: RecordSpill | None,
    progress: Callable[[], Awaitable[None]],
) -> str:
    """COPY the file's rows into `table` (`columns`: its header, read before); its SHA-256."""
    reader, header = await asyncio.to_thread(open_input, path, name=name, dataset=dataset)
    try:
        if header.columns != tuple(columns):
            raise InputFileError(f"{name}: the file changed while it was being imported")
        blocks = _Blocks(reader, rest=header.rest, scanner=scanner, rejects=rejects, spill=spill)
        await _copy_blocks(driver, blocks, table=table, columns=columns, progress=progress)
    finally:
        reader.close()
    return reader.sha256


class _Blocks:
    """One call per block, in the read-ahead thread: read, scan, spool. Done at the end of the
    file, or as soon as the rejects' spool is full (the import is then refused)."""

    def __init__(
        self,
        reader: InputReader,
        *,
        rest: bytes,
        scanner: Scanner,
        rejects: RejectLog,
        spill: RecordSpill | None,
    ) -> None:
        self._reader = reader
        self._rest = rest
        self._scanner = scanner
        self._rejects = rejects
        self._spill = spill

    def __call__(self) -> tuple[Scanned, bool]:
        data, self._rest = self._rest or self._reader.read(), b""
        scanned = self._scanner.feed(data) if data else self._scanner.finish()
        self._rejects.add(scanned.rejects)
        if self._spill is not None:
            self._spill.add(scanned.raw)
        return scanned, not data or self._rejects.full


async def _copy_blocks(
    driver: asyncpg.Connection,
    blocks: _Blocks,
    *,
    table: str,
    columns: Sequence[str],
    progress: Callable[[], Awaitable[None]],
) -> None:
    """COPY into `table` what `blocks` gives, in batches of about BATCH_BYTES."""
    ahead = ReadAhead(blocks)
    failure: Exception | None = None

    async def batch() -> AsyncIterator[bytes]:
        nonlocal failure
        sent = 0
        while not ahead.done and sent < BATCH_BYTES:
            try:
                scanned = await ahead.next()
            except Exception as exc:
                # Raised after COPY ends instead: an exception from the source makes asyncpg
                # send a cancel request, which can hit the session's next query.
                failure = exc
                return
            await progress()
            if scanned.data:
                sent += len(scanned.data)
                yield scanned.data

    try:
        while not ahead.done:
            await driver.copy_to_table(table, source=batch(), columns=list(columns), format="csv")
    finally:
        await ahead.close()  # the thread must be done with the file before it is closed
    if failure is not None:
        raise failure
