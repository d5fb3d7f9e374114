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

from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from jobs.errors import EtlError
from jobs.exports.files import ExportFileError, StagedFile, StagedOutput
from jobs.storage import ObjectPath, storage_failure

if TYPE_CHECKING:
    from obstore import WritableFile

log = structlog.get_logger("jobs.exports.objects")

# S3 takes parts of 5 MiB to 5 GiB, at most 10,000 of them: 8 MiB parts allow an 80 GB object.
# Two in flight overlap the upload with the next part's compression; the bytes held stay under
# (PARTS_IN_FLIGHT + 1) x PART_BYTES.
PART_BYTES = 8 << 20
PARTS_IN_FLIGHT = 2
MANIFEST_SUFFIX = ".manifest.json"  # as staging.MANIFEST_SUFFIX (staging imports this module)


class _Aborted(Exception):
    """Given to obstore's writer on the way out: leaving it with an exception aborts the upload."""


def staged_file(final: Path | ObjectPath, *, compress: bool) -> StagedFile | StagedObject:
    """A `StagedFile` for a local path, a `StagedObject` for a key in a bucket."""
    if isinstance(final, ObjectPath):
        return StagedObject(final, compress=compress)
    return StagedFile(final, compress=compress)


class StagedObject(StagedOutput):
    """An object uploaded in parts: invisible until the upload completes on `publish()`;
    `discard()` aborts the upload, `withdraw()` deletes a published object."""

    thread_name = "export-upload"

    def __init__(self, final: ObjectPath, *, compress: bool) -> None:
        store = final.store()  # first: ConfigError if the s3 extra is not installed
        import obstore

        self.final = final
        self._upload: WritableFile | None = obstore.open_writer(
            store, final.key, buffer_size=PART_BYTES, max_concurrency=PARTS_IN_FLIGHT
        )
        super().__init__(compress=compress)

    def _failure(self, exc: BaseException) -> EtlError:
        return storage_failure(
            exc,
            path=self.final,
            name=self.final.name,
            missing=ExportFileError,
            setting="ETL_EXPORT_DIR",
        )

    def _put(self, block: bytes) -> None:
        assert self._upload is not None
        try:
            self._upload.write(block)  # waits while PARTS_IN_FLIGHT parts are uploading
        except Exception as exc:
            raise self._failure(exc) from None

    def _make_visible(self) -> None:
        assert self._upload is not None
        upload, self._upload = self._upload, None
        try:
            upload.close()
        except Exception as exc:
            raise self._failure(exc) from None

    def _clean_up(self) -> None:
        upload, self._upload = self._upload, None
        if upload is None:
            return
        try:
            upload.__exit__(_Aborted, _Aborted(), None)
        except Exception as exc:  # the export's own error matters more; the lifecycle rule cleans
            log.warning("export.abort_failed", path=str(self.final), error=str(self._failure(exc)))

    def _take_back(self) -> None:
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
