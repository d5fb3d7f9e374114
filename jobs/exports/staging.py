"""Export files written under temp names, then published together: all of them or none.

An export file is `<export dir>/<dataset>/<prefix><dataset>-<UTC snapshot time>-<job tag>.<ext>`
(ext csv, jsonl, csv.gz or jsonl.gz; names sort by time) with `<file>.manifest.json` beside it.
A manifest's presence means its file is complete; readers wait for it.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, overload

from jobs.exports.feeds import FeedPosition
from jobs.exports.files import StagedFile
from jobs.exports.nested import nested_columns, stream_nested_jsonl
from jobs.exports.objects import StagedObject, staged_file
from jobs.exports.stream import Snapshot, copy_csv, stream_jsonl
from jobs.models import ExportResult
from jobs.registry import Dataset
from jobs.spec import JobRun
from jobs.storage import ObjectPath

ExportFormat = Literal["csv", "jsonl"]
MANIFEST_SUFFIX = ".manifest.json"
_HEX_ID = re.compile(r"[0-9a-f]{8,}")


def job_tag(job_id: str) -> str:
    """Eight hex characters naming the job in file names: arq's own id prefix, or a hash of it."""
    if not job_id:
        return secrets.token_hex(4)
    if _HEX_ID.fullmatch(job_id):
        return job_id[:8]
    return hashlib.sha256(job_id.encode()).hexdigest()[:8]


def export_file_name(
    *, dataset: str, fmt: ExportFormat, compress: bool, taken_at: datetime, tag: str, prefix: str
) -> str:
    stamp = taken_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"
    return f"{prefix}{dataset}-{stamp}-{tag}.{fmt}{'.gz' if compress else ''}"


@overload
def manifest_path(export_file: Path) -> Path: ...
@overload
def manifest_path(export_file: ObjectPath) -> ObjectPath: ...
@overload
def manifest_path(export_file: Path | ObjectPath) -> Path | ObjectPath: ...
def manifest_path(export_file: Path | ObjectPath) -> Path | ObjectPath:
    return export_file.with_name(export_file.name + MANIFEST_SUFFIX)


@dataclass
class StagedExport:
    """An export written under its temp name, waiting to be renamed into place."""

    file: StagedFile | StagedObject
    """Under a temp name, or a multipart upload not yet completed (jobs/exports/objects.py)."""
    manifest: dict[str, Any]
    result: ExportResult

    async def stage_manifest(self) -> StagedFile | StagedObject:
        """The manifest, written and fsynced under its temp name."""
        staged = staged_file(manifest_path(self.file.final), compress=False)
        try:
            await staged.write((json.dumps(self.manifest, indent=2) + "\n").encode())
            await staged.finish()
        except BaseException:
            await staged.discard()
            raise
        return staged

    async def discard(self) -> None:
        await self.file.discard()


async def publish_all(exports: Sequence[StagedExport]) -> list[ExportResult]:
    """Rename every staged file into place, then every manifest: all of them or none.

    The manifests are written under temp names before any rename, so only renames are left
    to fail. Data files go first, unseen by readers that wait for a manifest; a failed rename
    takes back the renames already done (manifests first) and removes every temp file. A
    crash (SIGKILL, power loss) between two manifest renames, a window of a rename and a
    directory fsync per dataset (milliseconds), can leave some datasets of a run published and
    not the others; a crash before them leaves data files without manifests, which readers
    ignore (nightly retention deletes them in time, and stale temp files after two hours).
    """
    files = [export.file for export in exports]
    manifests: list[StagedFile | StagedObject] = []
    published: list[StagedFile | StagedObject] = []
    try:
        for export in exports:
            manifests.append(await export.stage_manifest())
        for staged in [*files, *manifests]:
            await staged.publish()
            published.append(staged)
    except BaseException:
        for staged in reversed(published):
            await staged.withdraw()
        for staged in [*files, *manifests]:
            await staged.discard()
        raise
    return [export.result for export in exports]


async def _write(
    run: JobRun,
    snap: Snapshot,
    staged: StagedFile | StagedObject,
    *,
    dataset: Dataset,
    fmt: ExportFormat,
    since: datetime | None,
    position: FeedPosition | None,
    include: Sequence[str] = (),
) -> int:
    async def progress(rows: int) -> None:
        await run.progress(rows=rows)

    await run.progress(rows=0)
    if include:  # JSON Lines only, never incremental (the payload refuses both)
        assert fmt == "jsonl" and position is None
        return await stream_nested_jsonl(
            snap,
            dataset=dataset,
            include=include,
            since=since,
            sink=staged.write,
            progress=progress,
        )
    stream = copy_csv if fmt == "csv" else stream_jsonl
    changes = None if position is None else position.changes
    return await stream(
        snap, dataset=dataset, since=since, changes=changes, sink=staged.write, progress=progress
    )


async def stage_export(
    run: JobRun,
    snap: Snapshot,
    *,
    dataset: Dataset,
    directory: Path | ObjectPath,
    fmt: ExportFormat,
    compress: bool,
    since: datetime | None,
    position: FeedPosition | None,
    prefix: str,
    include: Sequence[str] = (),
) -> StagedExport:
    """Write the dataset under a temp name beside its final name; the temp goes on failure."""
    name = export_file_name(
        dataset=dataset.name,
        fmt=fmt,
        compress=compress,
        taken_at=snap.taken_at,
        tag=job_tag(run.job_id),
        prefix=prefix,
    )
    staged = staged_file(directory / name, compress=compress)
    try:
        rows = await _write(run, snap, staged, dataset=dataset, fmt=fmt, since=since,
                            position=position, include=include)  # fmt: skip
        digest = await staged.finish()
    except BaseException:
        await staged.discard()
        raise
    result = ExportResult(
        dataset=dataset.name,
        path=str(staged.final),
        rows=rows,
        bytes=digest.bytes,
        sha256=digest.sha256,
        format=fmt,
        compressed=compress,
        incremental=None if position is None else position.result(),
    )
    manifest = {
        "dataset": dataset.name,
        "file": name,
        "format": fmt,
        "compressed": compress,
        "columns": list(dataset.export_columns),
        "rows": rows,
        "bytes": digest.bytes,
        "sha256": digest.sha256,
        "since": since.isoformat() if since else None,
        "incremental": None if position is None else position.manifest(),
        "snapshot_at": snap.taken_at.astimezone(UTC).isoformat(),
        "job_id": run.job_id,
    }
    if include:  # each line's arrays and their columns; absent from flat exports' manifests
        manifest["include"] = nested_columns(dataset, include)
    return StagedExport(file=staged, manifest=manifest, result=result)
