"""Files that appear whole or not at all: written beside their final name, renamed into place.

A reader never sees half an export: the bytes go to a hidden temp file in the same directory
(so the rename stays on one filesystem and is atomic), which is fsynced before the rename and
whose directory is fsynced after it. A failure removes the temp file.

Several files are published together by writing each under its temp name first and renaming
them only once all are written (jobs/exports/staging.py): `publish()` then `withdraw()` undoes a
rename when a later one fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from jobs.errors import PermanentError

FILE_MODE = 0o640
DIR_MODE = 0o750
# Blocks this large keep the per-block costs (thread hand-off, syscalls) negligible, and the
# memory an export holds small and fixed: one block being filled, one being written.
BLOCK_BYTES = 1 << 20
# zlib level 1 runs well over twice as fast as level 6 for a file a few percent larger (README,
# "Measured design choices"). The worker's CPU is the scarce thing; disk for exports is not.
GZIP_LEVEL = 1
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # a gzip header and trailer, as `gzip -d` expects
TEMP_SUFFIX = ".tmp"


class ExportFileError(PermanentError):
    """An export file could not be written; no file of the export was published."""


@dataclass(frozen=True, slots=True)
class FileDigest:
    """What was written: the file's size and the SHA-256 of its bytes (compressed, if so)."""

    bytes: int
    sha256: str


def temp_name(final: Path) -> Path:
    """The hidden temp file beside `final`; `.` first so globs like `*.csv.gz` never match it."""
    return final.with_name(f".{final.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def ensure_directory(path: Path) -> None:
    """Create `path` (and missing parents) with mode 0750; an existing directory is left as is."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another export created it meanwhile
            directory.mkdir(mode=DIR_MODE)
            os.chmod(directory, DIR_MODE)  # mkdir's mode is filtered by the umask


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_durably(path: Path) -> None:
    path.unlink(missing_ok=True)
    _fsync_directory(path.parent)


class StagedOutput:
    """Bytes on their way to one destination: `finish()`, then `publish()` or `discard()`;
    `withdraw()` takes a published output back. Subclasses say how bytes go out (`_put`), how
    the output is sealed, made visible, removed before and after publishing.

    `write()` collects bytes into blocks and hands each block to this output's writer thread,
    which compresses, hashes and writes it while the event loop receives the next block: zlib,
    hashlib, file writes and uploads release the GIL, so compression overlaps the database
    stream. One thread per output keeps its operations in order, so a `discard()` issued while a
    block is being written cleans up only after that write, even if the job is being cancelled.
    """

    thread_name = "export-writer"

    def __init__(self, *, compress: bool) -> None:
        self._compressor = (
            zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS) if compress else None
        )
        self._hash = hashlib.sha256()
        self._size = 0
        self._buffer = bytearray()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.thread_name)
        self._pending: Future[None] | None = None
        self._finished = False
        self._done = False
        self._published = False

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data
        if len(self._buffer) >= BLOCK_BYTES:
            block = bytes(self._buffer)
            self._buffer.clear()
            # At most one block in the thread: memory stays fixed however fast rows arrive.
            await self._wait_pending()
            self._pending = self._writer.submit(self._sink, block)

    async def finish(self) -> FileDigest:
        """Write what is left, end the gzip stream and seal; not visible under its name yet."""
        await self._wait_pending()
        block = bytes(self._buffer)
        self._buffer.clear()
        await asyncio.wrap_future(self._writer.submit(self._end, block))
        self._finished = True
        return FileDigest(bytes=self._size, sha256=self._hash.hexdigest())

    async def publish(self) -> None:
        """Make the finished output visible under its final name, whole."""
        if not self._finished:
            raise RuntimeError("publish() before finish()")
        await asyncio.wrap_future(self._writer.submit(self._make_visible))
        self._done = self._published = True
        self._writer.shutdown(wait=False)

    async def withdraw(self) -> None:
        """Take a published output back; otherwise as `discard()`."""
        if not self._published:
            await self.discard()
            return
        self._published = False
        await asyncio.to_thread(self._take_back)

    async def discard(self) -> None:
        """Remove what was written; a no-op once published. Safe to call more than once."""
        if self._done:
            return
        self._done = True
        cleanup = self._writer.submit(self._clean_up)
        self._writer.shutdown(wait=False)
        await asyncio.wrap_future(cleanup)

    def release(self) -> None:
        """Leave the finished output under its temp name for another process to publish (a part
        of a parallel export: HandedFile); this object no longer removes it."""
        if not self._finished:
            raise RuntimeError("release() before finish()")
        self._done = True
        self._writer.shutdown(wait=False)

    async def _wait_pending(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await asyncio.wrap_future(pending)

    # in the writer thread

    def _sink(self, block: bytes) -> None:
        if self._compressor is not None:
            block = self._compressor.compress(block)
        self._emit(block)

    def _emit(self, block: bytes) -> None:
        self._hash.update(block)
        self._put(block)
        self._size += len(block)

    def _end(self, block: bytes) -> None:
        self._sink(block)
        if self._compressor is not None:
            self._emit(self._compressor.flush())
        self._seal()

    def _put(self, block: bytes) -> None:
        raise NotImplementedError

    def _seal(self) -> None:
        """Make what was written durable (it is not visible yet)."""

    def _make_visible(self) -> None:
        raise NotImplementedError

    def _take_back(self) -> None:
        raise NotImplementedError

    def _clean_up(self) -> None:
        raise NotImplementedError


class StagedFile(StagedOutput):
    """A file written under a temp name, renamed into place when published."""

    def __init__(self, final: Path, *, compress: bool) -> None:
        self.final = final
        self.temp = temp_name(final)
        self._fd: int | None = os.open(
            self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE
        )
        os.fchmod(self._fd, FILE_MODE)  # os.open's mode is filtered by the umask
        super().__init__(compress=compress)

    def _put(self, block: bytes) -> None:
        assert self._fd is not None
        view = memoryview(block)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def _seal(self) -> None:
        assert self._fd is not None
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None

    def _make_visible(self) -> None:
        os.replace(self.temp, self.final)
        _fsync_directory(self.final.parent)

    def _take_back(self) -> None:
        _unlink_durably(self.final)

    def _clean_up(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp)


class HandedFile:
    """A finished temp file another run wrote (StagedOutput.release), published from here with
    StagedFile's calls: renamed into place, taken back, or removed."""

    def __init__(self, temp: Path, final: Path) -> None:
        if temp.parent != final.parent or not (
            temp.name.startswith(f".{final.name}.") and temp.name.endswith(TEMP_SUFFIX)
        ):
            raise ValueError(f"{temp.name} is not a temp name of {final.name}")
        self.temp = temp
        self.final = final
        self._published = False

    async def publish(self) -> None:
        await asyncio.to_thread(self._rename)
        self._published = True

    async def withdraw(self) -> None:
        if self._published:
            self._published = False
            await asyncio.to_thread(_unlink_durably, self.final)
        else:
            await self.discard()

    async def discard(self) -> None:
        if not self._published:
            await asyncio.to_thread(self.temp.unlink, missing_ok=True)

    def _rename(self) -> None:
        os.replace(self.temp, self.final)
        _fsync_directory(self.final.parent)


def remove_temps(directory: Path, finals: list[str]) -> list[str]:
    """Remove every temp file of these final names in `directory` (whoever wrote them);
    returns the names removed. Blocking."""
    prefixes = tuple(f".{name}." for name in finals)
    removed = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(prefixes) and entry.name.endswith(TEMP_SUFFIX):
                Path(entry.path).unlink(missing_ok=True)
                removed.append(entry.name)
    return removed
