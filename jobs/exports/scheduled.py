"""An `export_dataset` run by a schedule entry: its files named after the entry, pruned to `keep`.

Each entry writes `<entry>-<dataset>-<stamp>-<tag>.<ext>` under `<export dir>/<dataset>/` (a local
directory or a prefix in a bucket), so its retention touches only its own files: never those of
another entry, of the nightly export, or of exports asked for by hand (jobs/exports/retention.py).
The worker's schedules (worker/schedules.py) decide which entry runs when; this is the work of one
run.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from jobs.exports.job import export_one
from jobs.exports.objects import prune, result_directory
from jobs.models import ExportPayload, ExportResult
from jobs.spec import JobRun


class ScheduledExportResult(ExportResult):
    deleted: list[str] = Field(default_factory=list)
    """The entry's older files (and their manifests) deleted to keep `keep` of them."""

    def log_fields(self) -> dict[str, Any]:
        return {"deleted": self.deleted, "deleted_count": len(self.deleted)}


def entry_prefix(entry: str) -> str:
    """What the names of an entry's files start with."""
    return f"{entry}-"


async def scheduled_export(
    run: JobRun, payload: ExportPayload, *, entry: str, keep: int | None
) -> ScheduledExportResult:
    """Export as `export_dataset` does, under the entry's prefix; then keep the newest `keep`."""
    result = await export_one(run, payload, prefix=entry_prefix(entry))
    deleted: list[str] = []
    if keep is not None:
        deleted = await asyncio.to_thread(
            prune,  # files, or objects when the export dir is in a bucket
            result_directory(run.config.export_dir, result.path),
            prefix=entry_prefix(entry),
            dataset=result.dataset,
            keep=keep,
        )
    return ScheduledExportResult(**result.model_dump(), deleted=deleted)
