"""`export_part`: one primary-key range of a parallel export, read in the export's own snapshot.

The export (jobs/exports/parallel.py) enqueues one part job per range; whichever run claims a
part first writes it (a worker that picked the job up, or the export itself), so each part is
written once. A part imports the export's snapshot (`SET TRANSACTION SNAPSHOT`), streams its range
to a temp file beside its final name and reports the file; it never publishes: the export renames
every part into place at once, or removes them all.

The temp file is created before the snapshot is imported. The export removes its parts' temp
files only after its snapshot is gone, so a part either imported the snapshot in time (and its
file, created earlier, is found and removed) or fails to import it and removes its own.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.errors import InvalidPayload, PermanentError, describe, is_transient, sqlstate_of
from jobs.exports.files import ExportFileError, StagedFile, ensure_directory
from jobs.exports.stream import KeyRange, copy_csv, snapshot, stream_jsonl
from jobs.models import MAX_EXPORT_PARTS, DatasetName, Payload
from jobs.paths import resolve_inside
from jobs.registry import Dataset, get_dataset
from jobs.spec import JobRun, etl_job
from jobs.storage import ObjectPath

PART_FUNCTION = "export_part"
CLAIM_TTL_S = 2 * 3600
"""A claim outlives any run of its export (an hour at most) and its part jobs."""
SNAPSHOT_ID = re.compile(r"[0-9A-F]{8}-[0-9A-F]{8}-[0-9]{1,10}")
INVALID_PARAMETER_VALUE = "22023"  # what SET TRANSACTION SNAPSHOT answers for a snapshot gone
PART_FILE = r"[A-Za-z0-9][A-Za-z0-9_-]*-\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{8}\.part-\d{2}-of-\d{2}"
PART_FILE += r"\.(?:csv|jsonl)(?:\.gz)?"

Key = StrictInt | StrictStr | None


class SnapshotGone(PermanentError):
    """The export's snapshot no longer exists; this part wrote nothing."""


class ExportPartPayload(Payload):
    """`export_part`: enqueued by a parallel `export_dataset`, not by apps."""

    dataset: DatasetName
    format: Literal["csv", "jsonl"]
    compress: StrictBool
    since: datetime | None = None
    snapshot: Annotated[str, Field(pattern=f"^{SNAPSHOT_ID.pattern}$")]
    part: Annotated[StrictInt, Field(ge=1, le=MAX_EXPORT_PARTS)]
    parts: Annotated[StrictInt, Field(ge=2, le=MAX_EXPORT_PARTS)]
    lower: Key = None
    """The part's first key (inclusive); None: from the first row."""
    upper: Key = None
    """The next part's first key (exclusive); None: to the last row."""
    file: Annotated[str, Field(pattern=f"^{PART_FILE}$")]
    """The part's final name in the dataset's directory."""
    export_job: Annotated[str, Field(max_length=200)]
    """The export's job id, for messages."""


class ExportPartResult(BaseModel):
    """A part written under its temp name (`ran`), or found claimed by another run (not `ran`).
    `part_rows` and `part_bytes`, not `rows`: the export's own result counts the rows."""

    dataset: str
    part: int
    parts: int
    ran: bool
    path: str | None = None
    temp: str | None = None
    part_rows: int = 0
    part_bytes: int = 0
    sha256: str | None = None


def part_directory(export_dir: Path | ObjectPath, dataset: Dataset) -> Path:
    """`<export dir>/<dataset>` as export_dataset makes it; parts are written to local files only
    (a part's multipart upload could not be completed by another process)."""
    if isinstance(export_dir, ObjectPath):
        raise InvalidPayload(
            f"invalid payload: parts: an export in parts is written to a local ETL_EXPORT_DIR, "
            f"not {export_dir}; export in one part"
        )
    ensure_directory(export_dir)
    directory = resolve_inside(export_dir, dataset.name)
    ensure_directory(directory)
    return directory


def _import(snapshot_id: str) -> Callable[[AsyncConnection], Awaitable[object]]:
    async def first(conn: AsyncConnection) -> object:
        assert SNAPSHOT_ID.fullmatch(snapshot_id)  # a literal: SET takes no parameters
        await conn.execute(text(f"set transaction snapshot '{snapshot_id}'"))
        return snapshot_id

    return first


def _key(dataset: str, value: Key) -> object:
    """A key from the payload in its column's type (UUIDs travel as text)."""
    if value is None:
        return None
    python_type: Any = get_dataset(dataset).table.primary_key.columns.values()[0].type.python_type
    try:
        return python_type(value)
    except (TypeError, ValueError):
        raise InvalidPayload(f"invalid payload: not a key of {dataset}: {value!r}") from None


def _failure(exc: BaseException, payload: ExportPartPayload) -> BaseException:
    where = f"export part {payload.part} of {payload.parts} ({payload.export_job})"
    if sqlstate_of(exc) == INVALID_PARAMETER_VALUE and "snapshot" in str(exc):
        return SnapshotGone(
            f"{where}: snapshot {payload.snapshot} no longer exists (its export ended or "
            "failed); nothing was written"
        )
    if isinstance(exc, OSError) and not is_transient(exc):
        return ExportFileError(f"{where} failed; nothing was published: {describe(exc)}")
    return exc


async def write_part(
    run: JobRun, payload: ExportPartPayload, *, directory: Path
) -> ExportPartResult:
    """Write the part's range under a temp name in `directory`; removed again on failure."""
    dataset = get_dataset(payload.dataset)
    staged = StagedFile(directory / payload.file, compress=payload.compress)
    key_range = KeyRange(
        lower=_key(dataset.name, payload.lower), upper=_key(dataset.name, payload.upper)
    )

    async def progress(rows: int) -> None:
        await run.progress(rows=rows)

    stream = copy_csv if payload.format == "csv" else stream_jsonl
    try:
        async with snapshot(run.sessionmaker, first=_import(payload.snapshot)) as snap:
            rows = await stream(
                snap,
                dataset=dataset,
                since=payload.since,
                sink=staged.write,
                progress=progress,
                key_range=key_range,
            )
        digest = await staged.finish()
    except BaseException as exc:
        await staged.discard()
        failure = _failure(exc, payload)
        if failure is exc:
            raise
        raise failure from exc
    staged.release()
    return ExportPartResult(
        dataset=dataset.name,
        part=payload.part,
        parts=payload.parts,
        ran=True,
        path=str(staged.final),
        temp=str(staged.temp),
        part_rows=rows,
        part_bytes=digest.bytes,
        sha256=digest.sha256,
    )


@etl_job(name=PART_FUNCTION, payload=ExportPartPayload, result=ExportPartResult, timeout_s=3600)
async def export_part(run: JobRun, payload: ExportPartPayload) -> ExportPartResult:
    """Write one part of a parallel export, unless another run has claimed it."""
    if not await run.claim(run.job_id, owner=run.job_id, ttl_s=CLAIM_TTL_S):
        return ExportPartResult(
            dataset=payload.dataset, part=payload.part, parts=payload.parts, ran=False
        )
    directory = part_directory(run.config.export_dir, get_dataset(payload.dataset))
    return await write_part(run, payload, directory=directory)
