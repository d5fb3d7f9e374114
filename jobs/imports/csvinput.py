"""Reading an import file: opening it (regular files only, or an object: a `Source`), gzip, its
digest, the header row."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from jobs.errors import InputFileError
from jobs.registry import Dataset

READ_BYTES = 1 << 18
MAX_HEADER_BYTES = 1 << 16
_BOM = b"\xef\xbb\xbf"
_GZIP_MAGIC = b"\x1f\x8b"


class RawInput(Protocol):
    """A binary file read front to back."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class Source(Protocol):
    """An import file that is not a local path (jobs/imports/objects.py: an object in a bucket).
    Both methods block: call them in a thread."""

    def open(self) -> RawInput: ...

    def sha256(self) -> str: ...


class _Hashing:
    """A binary file whose bytes are hashed as they are read (gzip reads through it).

    `head`: bytes already read from `raw` (to sniff gzip), given back first: an object's stream
    cannot seek back."""

    def __init__(self, raw: RawInput, *, head: bytes = b"") -> None:
        self._raw = raw
        self._head = head
        self.digest = hashlib.sha256()

    def read(self, size: int = -1, /) -> bytes:
        head, self._head = self._head, b""
        if head and 0 <= size <= len(head):
            data, self._head = head[:size], head[size:]
        else:
            data = head + self._raw.read(size - len(head) if size >= 0 else -1)
        self.digest.update(data)
        return data

    def seek(self, offset: int, /) -> int:
        # Reading moves forward only; a seek would make the digest lie.
        raise io.UnsupportedOperation("an import file is read front to back")


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "of an unknown kind"


def _not_regular(name: str, mode: int) -> InputFileError:
    return InputFileError(f"{name}: not a regular file ({_kind(mode)})")


def open_regular(path: Path, *, name: str) -> io.BufferedReader:
    """`path` opened for reading if it is a regular file; InputFileError if not, or if it cannot
    be opened. Blocking: call it in a thread. It never waits for a FIFO's writer: open() of a FIFO
    blocks until one appears, so the type is checked before opening, and the open is non-blocking
    in case the name was swapped for a FIFO in between."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(name, mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        # The import job adds which directory that is (import_file).
        raise InputFileError(
            f"{name}: no such file in the import directory", missing=True
        ) from None
    except PermissionError:
        raise InputFileError(f"{name}: cannot be read (permission denied)") from None
    except OSError as exc:
        raise InputFileError(f"{name}: cannot be opened ({exc.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(name, mode)
    os.set_blocking(fd, True)
    return open(fd, "rb")


def file_sha256(path: Path | Source, *, name: str) -> str:
    """The SHA-256 of the file on disk, read in blocks. Blocking: call it in a thread."""
    if not isinstance(path, Path):
        return path.sha256()
    with open_regular(path, name=name) as file:
        try:
            return hashlib.file_digest(file, "sha256").hexdigest()
        except OSError as exc:
            raise InputFileError(f"{name}: read failed ({exc.strerror or exc})") from None


class InputReader:
    """An import file's bytes, decompressed if it is gzip, and the SHA-256 of the file on disk.

    Opening and reading block (the file's type is checked first: see open_regular): do both in a
    thread.
    """

    def __init__(self, path: Path | Source, *, name: str) -> None:
        self.name = name
        raw = open_regular(path, name=name) if isinstance(path, Path) else path.open()
        self._raw = raw
        # Sniffed rather than trusted to the name: a gzip file called .csv still loads.
        head = raw.read(2)
        gzipped = head == _GZIP_MAGIC
        self._hashing = _Hashing(raw, head=head)
        if name.endswith(".gz") and not gzipped:
            raw.close()
            raise InputFileError(f"{name}: not a gzip file, though its name ends in .gz")
        self.gzipped = gzipped
        self._stream: _Hashing | gzip.GzipFile = (
            gzip.GzipFile(fileobj=self._hashing, mode="rb") if gzipped else self._hashing
        )

    def read(self, size: int | None = None) -> bytes:
        """Up to `size` (READ_BYTES) bytes of content; b"" at the end."""
        try:
            return self._stream.read(READ_BYTES if size is None else size)
        except EOFError:
            raise InputFileError(
                f"{self.name}: the gzip data ends early (truncated file?)"
            ) from None
        except (gzip.BadGzipFile, zlib.error) as exc:
            raise InputFileError(f"{self.name}: the gzip data is corrupt ({exc})") from None
        except OSError as exc:
            raise InputFileError(f"{self.name}: read failed ({exc.strerror or exc})") from None

    @property
    def sha256(self) -> str:
        """Of the bytes read so far from disk: the whole file once read() has returned b""."""
        return self._hashing.digest.hexdigest()

    def close(self) -> None:
        if isinstance(self._stream, gzip.GzipFile):
            self._stream.close()
        self._raw.close()

    def __enter__(self) -> InputReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class Header:
    columns: tuple[str, ...]
    rest: bytes
    """Content read past the header row: the start of line 2."""


def read_header(reader: InputReader, dataset: Dataset) -> Header:
    """Line 1: the column names, checked against the dataset; InputFileError if unusable."""
    name = reader.name
    data = b""
    while b"\n" not in data and len(data) <= MAX_HEADER_BYTES:
        chunk = reader.read()
        if not chunk:
            break
        data += chunk
    data = data.removeprefix(_BOM)
    example = ",".join(dataset.input_columns)
    if not data.strip(b"\r\n"):
        raise InputFileError(f"{name}: the file is empty; expected a header row such as {example}")
    end = data.find(b"\n")
    if end < 0 and len(data) > MAX_HEADER_BYTES:
        raise InputFileError(
            f"{name}: line 1 is longer than {MAX_HEADER_BYTES} bytes; expected a header row "
            f"such as {example}"
        )
    line, rest = (data, b"") if end < 0 else (data[:end], data[end + 1 :])
    line = line.removesuffix(b"\r")
    if b"\r" in line:
        raise InputFileError(
            f"{name}: lines end with a bare carriage return; save the file with \\n or \\r\\n "
            "line endings"
        )
    if b"\x00" in line:
        raise InputFileError(f"{name}: the header row (line 1) holds a NUL byte")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise InputFileError(f"{name}: the header row (line 1) is not valid UTF-8") from None
    try:
        fields = next(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise InputFileError(f"{name}: the header row (line 1) is not valid CSV ({exc})") from None
    return Header(columns=check_columns([f.strip() for f in fields], dataset, name=name), rest=rest)


def check_columns(names: list[str], dataset: Dataset, *, name: str) -> tuple[str, ...]:
    allowed = ", ".join(dataset.input_columns)
    if not any(names):
        raise InputFileError(f"{name}: the header row (line 1) is empty; expected {allowed}")
    seen: set[str] = set()
    for column in names:
        if column not in dataset.input_columns:
            raise InputFileError(
                f"{name}: unknown column {column[:64]!r} in the header; "
                f"{dataset.name} files take {allowed}"
            )
        if column in seen:
            raise InputFileError(f"{name}: column {column!r} appears twice in the header")
        seen.add(column)
    required = [c for c in dataset.input_columns if c in dataset.required_columns]
    missing = [c for c in required if c not in seen]
    if missing:
        raise InputFileError(
            f"{name}: missing required column {missing[0]!r} in the header; "
            f"{dataset.name} files need {', '.join(required)}"
        )
    return tuple(names)
