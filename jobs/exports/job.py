"""`export_dataset`: a dataset streamed from one snapshot to a file under the export dir.

The file and its manifest are written under temp names and renamed into place once complete
(jobs/exports/staging.py names them). With `incremental`, the export holds the rows written
since the feed's previous export and advances the feed (jobs/exports/feeds.py). With `parts`,
several workers write it as that many files (jobs/exports/parallel.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from jobs.errors import describe, is_transient
from jobs.exports.feeds import Cursor, FeedPosition, advance_feed, open_feed, take_cursor
from jobs.exports.files import ExportFileError, ensure_directory
from jobs.exports.parallel import export_in_parts
from jobs.exports.staging import ExportFormat, StagedExport, publish_all, stage_export
from jobs.exports.stream import Snapshot, snapshot
from jobs.models import ExportPayload, ExportResult
from jobs.paths import resolve_inside
from jobs.registry import Dataset, get_dataset
from jobs.spec import JobRun, etl_job
from jobs.storage import ObjectPath


def as_utc(value: datetime | None) -> datetime | None:
    """`since` without an offset means UTC, as everywhere else in the service."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def dataset_directory(export_dir: Path | ObjectPath, dataset: Dataset) -> Path | ObjectPath:
    """`<export dir>/<dataset>`, created 0750 if missing; refused if a symlink leads out of it.
    In a bucket, the prefix `<prefix>/<dataset>` (nothing to create; names are the registry's)."""
    if isinstance(export_dir, ObjectPath):
        return export_dir / dataset.name
    ensure_directory(export_dir)
    directory = resolve_inside(export_dir, dataset.name)
    ensure_directory(directory)
    return directory


def _failure(exc: BaseException, *, step: str) -> BaseException:
    """A file system error as one line saying what failed and that nothing was published."""
    if isinstance(exc, OSError) and not is_transient(exc):
        return ExportFileError(
            f"export failed {step}; no file of this export was published: {describe(exc)}"
        )
    return exc


async def export_datasets(
    run: JobRun,
    *,
    datasets: Sequence[Dataset],
    fmt: ExportFormat,
    compress: bool,
    since: datetime | None,
    prefix: str = "",
    feed: str | None = None,
    include: Sequence[str] = (),
) -> list[ExportResult]:
    """Export each dataset from one snapshot; the files appear only once all of them are written.

    One snapshot makes the files agree with each other (every account's customer is in the
    customers file). A failure leaves none of them, and no temp file, behind. With `feed` (one
    dataset only), the export is the feed's next one: published before its transaction commits,
    so that the feed advances only if the file is in place (jobs/exports/feeds.py). With
    `include`, each JSON line nests those relationships (jobs/exports/nested.py).
    """
    export_dir = run.config.export_dir
    directories = [dataset_directory(export_dir, dataset) for dataset in datasets]
    staged: list[StagedExport] = []
    step = "before writing"
    try:
        first = None if feed is None else take_cursor
        async with snapshot(run.sessionmaker, read_only=feed is None, first=first) as snap:
            position = None
            if feed is not None:
                assert isinstance(snap.opening, Cursor)
                (dataset,) = datasets
                position = await open_feed(snap.conn, snap.opening, name=feed, dataset=dataset.name)
            for dataset, directory in zip(datasets, directories, strict=True):
                step = f"while writing {dataset.name}"
                staged.append(
                    await stage_export(
                        run,
                        snap,
                        dataset=dataset,
                        directory=directory,
                        fmt=fmt,
                        compress=compress,
                        since=since,
                        position=position,
                        prefix=prefix,
                        include=include,
                    )
                )
            step = "while publishing"
            if position is not None:
                return await _publish_with_feed(run, snap, position, staged)
        return await publish_all(staged)
    except BaseException as exc:
        for export in staged:
            await export.discard()  # a no-op for published files
        failure = _failure(exc, step=step)
        if failure is exc:
            raise
        raise failure from exc


async def _publish_with_feed(
    run: JobRun, snap: Snapshot, position: FeedPosition, staged: list[StagedExport]
) -> list[ExportResult]:
    (export,) = staged
    await advance_feed(
        snap.conn,
        position,
        taken_at=snap.taken_at,
        file=export.file.final.name,
        job_id=run.job_id,
    )
    return await publish_all(staged)


@etl_job(name="export_dataset", payload=ExportPayload, result=ExportResult, timeout_s=3600)
async def export_dataset(run: JobRun, payload: ExportPayload) -> ExportResult:
    """Stream one dataset to a CSV or JSON Lines file (optionally gzipped) under the export dir."""
    return await export_one(run, payload)


async def export_one(run: JobRun, payload: ExportPayload, *, prefix: str = "") -> ExportResult:
    """`export_dataset`'s work; `prefix` starts the file's name (a schedule entry's name: see
    jobs/exports/scheduled.py, which runs every export_dataset argument through here). With
    `parts`, the export is written in parallel (jobs/exports/parallel.py)."""
    if payload.parts > 1:
        return await export_in_parts(run, payload, prefix=prefix)
    (result,) = await export_datasets(
        run,
        datasets=[get_dataset(payload.dataset)],
        fmt=payload.format,
        compress=payload.compress,
        since=as_utc(payload.since),
        feed=payload.incremental,
        include=payload.include,
        prefix=prefix,
    )
    return result
