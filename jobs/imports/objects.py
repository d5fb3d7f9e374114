"""Reading an import file from a bucket: one streaming GET per read, in blocks, never whole.

The read-ahead thread pulls the object's body a block at a time (obstore's blocking stream,
which releases the GIL), so what is held is one block and the HTTP client's small buffer: the
object never sits in memory or on local disk. TCP flow control holds the server back while COPY
is slower than the network.

An import reads its object more than once (the header before the transaction, then the rows, and
the digest when a committed import is asked for again). The first read fixes the version (its
ETag); every later one asks for that version only (`If-Match`), so an object replaced meanwhile
fails the import in one line instead of loading rows of one version and recording the digest of
another. Within one read, S3 serves the version the GET started with, whatever is written
meanwhile: the digest recorded is of the bytes loaded.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from jobs.errors import EtlError, InputFileError
from jobs.imports.csvinput import READ_BYTES
from jobs.storage import ObjectPath, storage_failure

if TYPE_CHECKING:
    from obstore import BytesStream, GetOptions


class ObjectSource:
    """An import file in a bucket: `open()` for a reader, `sha256()` for its digest."""

    def __init__(self, path: ObjectPath, *, name: str) -> None:
        self.path = path
        self.name = name
        self.etag: str | None = None
        """The version every read after the first asks for."""

    def __str__(self) -> str:
        return str(self.path)

    def open(self) -> ObjectReader:
        """A GET of the object, streaming. Blocking: call it in a thread."""
        store = self.path.store()  # first: ConfigError if the s3 extra is not installed
        import obstore

        options: GetOptions = {}
        if self.etag is not None:
            options["if_match"] = self.etag
        try:
            result = obstore.get(store, self.path.key, options=options)
        except Exception as exc:
            raise self._failure(exc) from None
        etag = result.meta.get("e_tag")
        if self.etag is None:
            self.etag = etag
        return ObjectReader(result.stream(min_chunk_size=READ_BYTES), source=self)

    def sha256(self) -> str:
        """The SHA-256 of the object (of the version fixed by the first read). Blocking."""
        digest = hashlib.sha256()
        with self.open() as reader:
            while chunk := reader.read(READ_BYTES):
                digest.update(chunk)
        return digest.hexdigest()

    def _failure(self, exc: BaseException) -> EtlError:
        return storage_failure(
            exc, path=self.path, name=self.name, missing=InputFileError, setting="ETL_IMPORT_DIR"
        )


class ObjectReader:
    """The body of one GET as a binary file read front to back (`read(size)`, `close()`)."""

    def __init__(self, chunks: BytesStream, *, source: ObjectSource) -> None:
        self._chunks: BytesStream | None = chunks
        self._source = source
        self._held = b""

    def read(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes (all that is left if negative); b"" at the end."""
        while self._chunks is not None and (size < 0 or len(self._held) < size):
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._chunks = None
                break
            except Exception as exc:
                self.close()
                raise self._source._failure(exc) from None
            self._held = self._held + chunk if self._held else chunk
        if size < 0 or size >= len(self._held):
            data, self._held = self._held, b""
        else:
            data, self._held = self._held[:size], self._held[size:]
        return data

    def close(self) -> None:
        """Drop the stream: the connection is closed, whatever is left unread."""
        self._chunks = None
        self._held = b""

    def __enter__(self) -> ObjectReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
