"""Export files in a bucket: streamed into a multipart upload that completes only on publish.

`StagedObject` does for an `s3://` export dir what `StagedFile` (files.py) does for a local one,
with the same calls: `write()` collects bytes into blocks that a writer thread of its own
compresses, hashes and hands to obstore's writer, which uploads them as the parts of one
multipart upload (PART_BYTES each, at most PARTS_IN_FLIGHT at once: the memory an export holds
stays fixed). `finish()` writes the rest and knows the digest, but leaves the last part in the
writer; `publish()` sends it and completes the upload, the moment the object appears under its
final key, whole (S3 shows nothing of an upload before it completes). `discard()` aborts the
upload, so a failed export leaves no object and no stored parts; `withdraw()` deletes a published
object. As with files, the manifest is published after its object and readers wait for it.

An upload whose completion itself fails (a part refused at the very end) cannot be aborted
through obstore, which keeps the upload id to itself: give the bucket a lifecycle rule that
aborts incomplete multipart uploads after a day (README, "Object storage").
"""

from __future__ import annotations

import asyncio
import hashlib
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from jobs.errors import EtlError
from jobs.exports.files import BLOCK_BYTES, GZIP_LEVEL, ExportFileError, FileDigest, StagedFile
from jobs.storage import ObjectPath, storage_failure

if TYPE_CHECKING:
    from obstore import WritableFile

log = structlog.get_logger("jobs.exports.objects")

# S3 takes parts of 5 MiB to 5 GiB, at most 10,000 of them: 8 MiB parts allow an 80 GB object.
# Two in flight overlap the upload with the next part's compression; the bytes held stay under
# (PARTS_IN_FLIGHT + 1) x PART_BYTES.
PART_BYTES = 8 << 20
PARTS_IN_FLIGHT = 2
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # as files.py: a gzip header and trailer
MANIFEST_SUFFIX = ".manifest.json"  # as staging.MANIFEST_SUFFIX (staging imports this module)


class _Aborted(Exception):
    """Given to obstore's writer on the way out: leaving it with an exception aborts the upload."""


def staged_file(final: Path | ObjectPath, *, compress: bool) -> StagedFile | StagedObject:
    """A `StagedFile` for a local path, a `StagedObject` for a key in a bucket."""
    if isinstance(final, ObjectPath):
        return StagedObject(final, compress=compress)
    return StagedFile(final, compress=compress)


class StagedObject:
    """An object being uploaded: `finish()`, then `publish()` or `discard()`; `withdraw()`
    deletes a published one. The calls are StagedFile's, in the same order."""

    def __init__(self, final: ObjectPath, *, compress: bool) -> None:
        store = final.store()  # first: ConfigError if the s3 extra is not installed
        import obstore

        self.final = final
        self._compressor = (
            zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS) if compress else None
        )
        self._hash = hashlib.sha256()
        self._size = 0
        self._buffer = bytearray()
        self._upload: WritableFile | None = obstore.open_writer(
            store, final.key, buffer_size=PART_BYTES, max_concurrency=PARTS_IN_FLIGHT
        )
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-upload")
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
        """Write what is left and end the gzip stream; the object is not visible yet."""
        await self._wait_pending()
        block = bytes(self._buffer)
        self._buffer.clear()
        await asyncio.wrap_future(self._writer.submit(self._end, block))
        self._finished = True
        return FileDigest(bytes=self._size, sha256=self._hash.hexdigest())

    async def publish(self) -> None:
        """Upload the last part and complete the upload: the object appears, whole."""
        if not self._finished:
            raise RuntimeError("publish() before finish()")
        await asyncio.wrap_future(self._writer.submit(self._complete))
        self._done = self._published = True
        self._writer.shutdown(wait=False)

    async def withdraw(self) -> None:
        """Delete a published object; otherwise as `discard()`."""
        if not self._published:
            await self.discard()
            return
        self._published = False
        await asyncio.to_thread(self._delete)

    async def discard(self) -> None:
        """Abort the upload; a no-op once published. Safe to call more than once."""
        if self._done:
            return
        self._done = True
        cleanup = self._writer.submit(self._abort)
        self._writer.shutdown(wait=False)
        await asyncio.wrap_future(cleanup)

    async def _wait_pending(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await asyncio.wrap_future(pending)

    # in the writer thread

    def _failure(self, exc: BaseException) -> EtlError:
        return storage_failure(
            exc,
            path=self.final,
            name=self.final.name,
            missing=ExportFileError,
            setting="ETL_EXPORT_DIR",
        )

    def _sink(self, block: bytes) -> None:
        if self._compressor is not None:
            block = self._compressor.compress(block)
        self._send(block)

    def _send(self, block: bytes) -> None:
        assert self._upload is not None
        self._hash.update(block)
        self._size += len(block)
        try:
            self._upload.write(block)  # waits while PARTS_IN_FLIGHT parts are uploading
        except Exception as exc:
            raise self._failure(exc) from None

    def _end(self, block: bytes) -> None:
        self._sink(block)
        if self._compressor is not None:
            self._send(self._compressor.flush())

    def _complete(self) -> None:
        assert self._upload is not None
        upload, self._upload = self._upload, None
        try:
            upload.close()
        except Exception as exc:
            raise self._failure(exc) from None

    def _abort(self) -> None:
        upload, self._upload = self._upload, None
        if upload is None:
            return
        try:
            upload.__exit__(_Aborted, _Aborted(), None)
        except Exception as exc:  # the export's own error matters more; the lifecycle rule cleans
            log.warning("export.abort_failed", path=str(self.final), error=str(self._failure(exc)))

    def _delete(self) -> None:
        import obstore

        try:
            obstore.delete(self.final.store(), self.final.key)
        except Exception as exc:
            log.warning(
                "export.withdraw_failed", path=str(self.final), error=str(self._failure(exc))
            )


def result_directory(export_dir: Path | ObjectPath, result_path: str) -> Path | ObjectPath:
    """The directory (or prefix) holding an export's file, from the path in its result."""
    if isinstance(export_dir, ObjectPath):
        key = result_path.removeprefix(f"s3://{export_dir.bucket}/")
        return ObjectPath(export_dir.bucket, key, export_dir.options).parent
    return Path(result_path).parent


def prune_objects(directory: ObjectPath, *, prefix: str, dataset: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` objects written under `prefix` in `directory` (and their
    manifests), as retention.prune_exports does for files; returns their URLs. Blocking."""
    import obstore

    from jobs.exports.retention import export_file_pattern  # retention imports staging, which
    # imports this module

    store = directory.store()
    pattern = export_file_pattern(prefix, dataset)
    try:
        listed = obstore.list_with_delimiter(store, directory.key + "/")
    except Exception as exc:
        raise storage_failure(
            exc,
            path=directory,
            name=directory.key,
            missing=ExportFileError,
            setting="ETL_EXPORT_DIR",
        ) from None
    names = sorted(
        (
            name
            for meta in listed["objects"]
            if pattern.fullmatch(name := meta["path"].rpartition("/")[2])
        ),
        reverse=True,
    )
    deleted = []
    for name in names[keep:]:
        path = directory / name
        # Manifest first: an object left without one (if we stop here) is still matched next time.
        obstore.delete(store, [(directory / (name + MANIFEST_SUFFIX)).key, path.key])
        deleted.append(str(path))
    return deleted


def prune(directory: Path | ObjectPath, *, prefix: str, dataset: str, keep: int) -> list[str]:
    """retention.prune_exports for a local directory, prune_objects for a prefix. Blocking."""
    if isinstance(directory, ObjectPath):
        return prune_objects(directory, prefix=prefix, dataset=dataset, keep=keep)
    from jobs.exports.retention import prune_exports

    return prune_exports(directory, prefix=prefix, dataset=dataset, keep=keep)
