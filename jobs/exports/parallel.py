"""`export_dataset(parts=N)`: one snapshot written as N files in parallel, as `pg_dump -j` does.

The export (the coordinator) opens a REPEATABLE READ, READ ONLY transaction, exports its
snapshot (`pg_export_snapshot()`), splits the table into N primary-key ranges
(jobs/exports/partition.py) and enqueues one `export_part` job per range (jobs/exports/part.py),
which any worker may run. Every run of a part first takes the part's claim, so a part is written
once: the coordinator claims the parts one by one, last first, and writes each one it gets
itself, while workers take the others from the front of the queue; it then waits for the parts
other workers claimed. With no free worker (ETL_MAX_JOBS=1, all busy) the coordinator writes every
part and the part jobs, run later, find their claims taken and end at once: an export in parts
never waits for a worker.

The coordinator holds its snapshot until every part has finished. Then it writes one manifest
listing the parts (rows, bytes, sha256 each) and renames every part and the manifest into place,
all or nothing. If a part fails, no file is published and every part's temp file is removed, once
the snapshot is gone (so no part can start writing after the clean-up).

Part job ids are `<export job id>:part-<i>-of-<n>:try-<t>`: a rerun of the export (try t + 1)
takes a new snapshot, enqueues new parts and claims the earlier try's, which then do nothing.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.errors import PermanentError, describe, is_transient
from jobs.exports.files import ExportFileError, HandedFile, StagedFile, remove_temps
from jobs.exports.part import (
    CLAIM_TTL_S,
    PART_FUNCTION,
    ExportPartPayload,
    ExportPartResult,
    part_directory,
    write_part,
)
from jobs.exports.partition import as_json, key_boundaries, key_column, key_ranges, part_file_name
from jobs.exports.staging import export_file_name, job_tag, manifest_path
from jobs.exports.stream import Snapshot, snapshot
from jobs.models import ExportPayload, ExportResult, PartFile
from jobs.registry import Dataset, get_dataset
from jobs.spec import JobRun

POLL_S = 0.1
"""How often the coordinator reads the outcomes of the parts other workers run."""


class PartFailed(PermanentError):
    """A part of the export failed; no file of the export was published."""


@dataclass(frozen=True, slots=True)
class Plan:
    """The export's parts: each one's job id and payload, in key order."""

    directory: Path
    name: str
    """The export's own name (a one-part export's file name); the manifest is named after it."""
    job_ids: list[str]
    payloads: list[ExportPartPayload]


def part_job_id(export_job: str, *, part: int, parts: int, job_try: int) -> str:
    return f"{export_job}:part-{part:02d}-of-{parts:02d}:try-{job_try}"


async def _export_snapshot(conn: AsyncConnection) -> object:
    return (await conn.execute(text("select pg_export_snapshot()"))).scalar_one()


async def _plan(
    run: JobRun, snap: Snapshot, payload: ExportPayload, *, directory: Path, prefix: str
) -> Plan:
    dataset = get_dataset(payload.dataset)
    name = export_file_name(
        dataset=dataset.name,
        fmt=payload.format,
        compress=payload.compress,
        taken_at=snap.taken_at,
        tag=job_tag(run.job_id),
        prefix=prefix,
    )
    export_job = run.job_id or job_tag("")
    ranges = key_ranges(await key_boundaries(snap.conn, dataset, parts=payload.parts))
    payloads = [
        ExportPartPayload(
            dataset=dataset.name,
            format=payload.format,
            compress=payload.compress,
            since=payload.since,
            snapshot=str(snap.opening),
            part=part,
            parts=payload.parts,
            lower=as_json(key_range.lower),
            upper=as_json(key_range.upper),
            file=part_file_name(name, part=part, parts=payload.parts),
            export_job=export_job,
        )
        for part, key_range in enumerate(ranges, start=1)
    ]
    job_ids = [
        part_job_id(export_job, part=p.part, parts=p.parts, job_try=run.job_try) for p in payloads
    ]
    return Plan(directory=directory, name=name, job_ids=job_ids, payloads=payloads)


async def _enqueue(run: JobRun, plan: Plan) -> None:
    """Enqueue every part, and take the claims of an earlier try's parts (they then do nothing)."""
    owner = f"{run.job_id}:try-{run.job_try}"
    parts = len(plan.payloads)
    for earlier in range(1, run.job_try):
        for part in range(1, parts + 1):
            job_id = part_job_id(run.job_id, part=part, parts=parts, job_try=earlier)
            await run.claim(job_id, owner=owner, ttl_s=CLAIM_TTL_S)
    for job_id, payload in zip(plan.job_ids, plan.payloads, strict=True):
        await run.enqueue(PART_FUNCTION, job_id=job_id, **payload.model_dump(mode="json"))


async def _collect(
    run: JobRun, plan: Plan, waiting: dict[int, str], done: dict[int, ExportPartResult]
) -> None:
    """Move the parts in `waiting` that have finished into `done`; PartFailed for a failure."""
    ids = list(waiting.values())
    for (part, job_id), outcome in zip(list(waiting.items()), await run.outcomes(ids), strict=True):
        if outcome is None:
            continue
        where = f"part {part} of {len(plan.payloads)} ({job_id})"
        if not outcome.ok:
            raise PartFailed(f"{where} failed: {outcome.error}")
        result = ExportPartResult.model_validate(outcome.result)
        if not result.ran:
            raise PartFailed(f"{where} was not written: its claim was held by another run")
        done[part] = result
        del waiting[part]


async def _write_parts(run: JobRun, plan: Plan) -> list[ExportPartResult]:
    """Every part, written here when claimed here, else by the worker that claimed it."""
    done: dict[int, ExportPartResult] = {}
    waiting: dict[int, str] = {}
    for job_id, payload in reversed(list(zip(plan.job_ids, plan.payloads, strict=True))):
        if await run.claim(job_id, owner=run.job_id, ttl_s=CLAIM_TTL_S):
            done[payload.part] = await write_part(run, payload, directory=plan.directory)
        else:
            waiting[payload.part] = job_id
        await _collect(run, plan, waiting, done)  # a failure elsewhere ends the export early
        await run.progress(parts_done=len(done), rows=sum(r.part_rows for r in done.values()))
    while waiting:
        await asyncio.sleep(POLL_S)
        await _collect(run, plan, waiting, done)
    await run.progress(parts_done=len(done), rows=sum(r.part_rows for r in done.values()))
    return [done[payload.part] for payload in plan.payloads]


def _manifest(
    run: JobRun, snap_at: Any, payload: ExportPayload, plan: Plan, parts: list[ExportPartResult]
) -> dict[str, Any]:
    dataset = get_dataset(payload.dataset)
    return {
        "dataset": dataset.name,
        "file": None,
        "format": payload.format,
        "compressed": payload.compress,
        "columns": list(dataset.export_columns),
        "rows": sum(part.part_rows for part in parts),
        "bytes": sum(part.part_bytes for part in parts),
        "sha256": None,
        "since": payload.since.isoformat() if payload.since else None,
        "incremental": None,
        "snapshot_at": snap_at.astimezone(UTC).isoformat(),
        "job_id": run.job_id,
        "key": key_column(dataset),
        "parts": [
            {
                "part": spec.part,
                "file": spec.file,
                "from": spec.lower,
                "to": spec.upper,
                "rows": part.part_rows,
                "bytes": part.part_bytes,
                "sha256": part.sha256,
            }
            for spec, part in zip(plan.payloads, parts, strict=True)
        ],
    }


async def _publish(plan: Plan, parts: list[ExportPartResult], manifest: dict[str, Any]) -> str:
    """Rename every part, then the manifest, into place: all of them or none. Returns the
    manifest's sha256."""
    files = [
        HandedFile(Path(str(part.temp)), plan.directory / spec.file)
        for part, spec in zip(parts, plan.payloads, strict=True)
    ]
    staged = StagedFile(manifest_path(plan.directory / plan.name), compress=False)
    outputs: list[HandedFile | StagedFile] = [*files, staged]
    published: list[HandedFile | StagedFile] = []
    try:
        await staged.write((json.dumps(manifest, indent=2) + "\n").encode())
        digest = await staged.finish()
        for output in outputs:
            await output.publish()
            published.append(output)
    except BaseException:
        for output in reversed(published):
            await output.withdraw()
        for output in outputs:
            await output.discard()
        raise
    return digest.sha256


async def _abandon(run: JobRun, plan: Plan | None) -> None:
    """After a failure, once the snapshot is gone: claim every part nobody started (its job then
    does nothing) and remove every part's temp file, whoever wrote it."""
    if plan is None:
        return
    for job_id in plan.job_ids:
        await run.claim(job_id, owner=run.job_id, ttl_s=CLAIM_TTL_S)
    await asyncio.to_thread(remove_temps, plan.directory, [p.file for p in plan.payloads])


async def export_in_parts(run: JobRun, payload: ExportPayload, *, prefix: str) -> ExportResult:
    """The export written as `payload.parts` files from one snapshot, published together."""
    dataset: Dataset = get_dataset(payload.dataset)
    directory = part_directory(run.config.export_dir, dataset)
    plan: Plan | None = None
    step = "before writing"
    try:
        async with snapshot(run.sessionmaker, first=_export_snapshot) as snap:
            plan = await _plan(run, snap, payload, directory=directory, prefix=prefix)
            await _enqueue(run, plan)
            step = "while writing its parts"
            parts = await _write_parts(run, plan)
        step = "while publishing"
        manifest = _manifest(run, snap.taken_at, payload, plan, parts)
        sha256 = await _publish(plan, parts, manifest)
    except BaseException as exc:
        await asyncio.shield(_abandon(run, plan))
        failure = _failure(exc, step=step)
        if failure is exc:
            raise
        raise failure from exc
    await asyncio.to_thread(remove_temps, directory, [p.file for p in plan.payloads])  # strays
    return ExportResult(
        dataset=dataset.name,
        path=str(manifest_path(directory / plan.name)),
        rows=manifest["rows"],
        bytes=manifest["bytes"],
        sha256=sha256,
        format=payload.format,
        compressed=payload.compress,
        parts=[
            PartFile(
                path=str(part.path), rows=part.part_rows, bytes=part.part_bytes, sha256=part.sha256
            )
            for part in parts
            if part.sha256 is not None
        ],
    )


def _failure(exc: BaseException, *, step: str) -> BaseException:
    """One line saying what failed and that nothing was published (a transient error as is)."""
    if isinstance(exc, PartFailed | ExportFileError) or (
        isinstance(exc, OSError) and not is_transient(exc)
    ):
        return PartFailed(
            f"export failed {step}; no file of this export was published: {describe(exc)}"
        )
    return exc
