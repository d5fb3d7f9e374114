"""`export_dataset`: a dataset streamed from one snapshot to a file under the export dir.

The file is `<export dir>/<dataset>/<prefix><dataset>-<UTC snapshot time>-<job tag>.<ext>` with
ext csv, jsonl, csv.gz or jsonl.gz (names sort by time). It is written under a temp name and
renamed into place when complete; its `<file>.manifest.json` is written the same way just after
it, so a manifest's presence means its file is complete.
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
from typing import Any, Literal

from jobs.exports.files import StagedFile, ensure_directory, write_file_atomically
from jobs.exports.stream import Snapshot, copy_csv, snapshot, stream_jsonl
from jobs.models import ExportPayload, ExportResult
from jobs.paths import resolve_inside
from jobs.registry import Dataset, get_dataset
from jobs.spec import JobRun, etl_job

ExportFormat = Literal["csv", "jsonl"]
MANIFEST_SUFFIX = ".manifest.json"
_HEX_ID = re.compile(r"[0-9a-f]{8,}")


def as_utc(value: datetime | None) -> datetime | None:
    """`since` without an offset means UTC, as everywhere else in the service."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


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


def manifest_path(export_file: Path) -> Path:
    return export_file.with_name(export_file.name + MANIFEST_SUFFIX)


def dataset_directory(export_dir: Path, dataset: Dataset) -> Path:
    """`<export dir>/<dataset>`, created 0750 if missing; refused if a symlink leads out of it."""
    ensure_directory(export_dir)
    directory = resolve_inside(export_dir, dataset.name)
    ensure_directory(directory)
    return directory


@dataclass
class StagedExport:
    """An export written under its temp name, waiting to be renamed into place."""

    file: StagedFile
    manifest: dict[str, Any]
    result: ExportResult

    async def publish(self) -> ExportResult:
        await self.file.publish()
        final = self.file.final
        text = json.dumps(self.manifest, indent=2) + "\n"
        try:
            await write_file_atomically(manifest_path(final), text.encode())
        except BaseException:
            # A file without its manifest would look unfinished to readers that wait for one.
            final.unlink(missing_ok=True)
            raise
        return self.result

    async def discard(self) -> None:
        await self.file.discard()


async def stage_export(
    run: JobRun,
    snap: Snapshot,
    *,
    dataset: Dataset,
    directory: Path,
    fmt: ExportFormat,
    compress: bool,
    since: datetime | None,
    prefix: str,
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
    staged = StagedFile(directory / name, compress=compress)

    async def progress(rows: int) -> None:
        await run.progress(rows=rows)

    try:
        await run.progress(rows=0)
        stream = copy_csv if fmt == "csv" else stream_jsonl
        rows = await stream(
            snap, dataset=dataset, since=since, sink=staged.write, progress=progress
        )
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
        "snapshot_at": snap.taken_at.astimezone(UTC).isoformat(),
        "job_id": run.job_id,
    }
    return StagedExport(file=staged, manifest=manifest, result=result)


async def export_datasets(
    run: JobRun,
    *,
    datasets: Sequence[Dataset],
    fmt: ExportFormat,
    compress: bool,
    since: datetime | None,
    prefix: str = "",
) -> list[ExportResult]:
    """Export each dataset from one snapshot; the files appear only once all of them are written.

    One snapshot makes the files agree with each other (every account's customer is in the
    customers file). A failure leaves none of them, and no temp file, behind.
    """
    export_dir = run.config.export_dir
    directories = [dataset_directory(export_dir, dataset) for dataset in datasets]
    staged: list[StagedExport] = []
    try:
        async with snapshot(run.sessionmaker) as snap:
            for dataset, directory in zip(datasets, directories, strict=True):
                staged.append(
                    await stage_export(
                        run,
                        snap,
                        dataset=dataset,
                        directory=directory,
                        fmt=fmt,
                        compress=compress,
                        since=since,
                        prefix=prefix,
                    )
                )
        return [await export.publish() for export in staged]
    except BaseException:
        for export in staged:
            await export.discard()
        raise


@etl_job(name="export_dataset", payload=ExportPayload, result=ExportResult, timeout_s=3600)
async def export_dataset(run: JobRun, payload: ExportPayload) -> ExportResult:
    """Stream one dataset to a CSV or JSON Lines file (optionally gzipped) under the export dir."""
    (result,) = await export_datasets(
        run,
        datasets=[get_dataset(payload.dataset)],
        fmt=payload.format,
        compress=payload.compress,
        since=as_utc(payload.since),
    )
    return result
