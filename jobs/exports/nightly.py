"""`nightly_export`: the cron job that writes gzipped CSV of the configured datasets every night.

The worker registers it with arq's `cron(..., unique=True)`: every worker enqueues the tick's job
under the same id (`nightly_export:<tick in ms>`), arq refuses an id that is queued or has a
result, and only one worker can hold a job's in-progress key, so each tick runs once however many
workers run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pydantic import Field

from jobs.errors import ConfigError, UnknownDataset
from jobs.exports.job import export_datasets
from jobs.exports.objects import prune, result_directory
from jobs.exports.retention import NIGHTLY_PREFIX
from jobs.models import NightlyResult, Payload
from jobs.registry import DATASETS, Dataset, get_dataset
from jobs.spec import JobRun, etl_job


class NightlyPayload(Payload):
    keep: int | None = Field(default=None, ge=1)
    """Files kept per dataset; unset: ETL_EXPORT_KEEP (a schedule entry's `keep` sets it)."""


def nightly_datasets(configured: Sequence[str]) -> list[Dataset]:
    """The datasets named by ETL_NIGHTLY_DATASETS, in order, each once; ConfigError if unknown."""
    names = list(dict.fromkeys(configured))
    if not names:
        raise ConfigError(
            f"ETL_NIGHTLY_DATASETS names no dataset; give some of {', '.join(sorted(DATASETS))}"
        )
    datasets = []
    for name in names:
        try:
            datasets.append(get_dataset(name))
        except UnknownDataset as exc:
            raise ConfigError(f"ETL_NIGHTLY_DATASETS: {exc.message}") from None
    return datasets


@etl_job(name="nightly_export", payload=NightlyPayload, result=NightlyResult, timeout_s=3600)
async def nightly_export(run: JobRun, payload: NightlyPayload) -> NightlyResult:
    """Export each nightly dataset from one snapshot, then keep only the newest files of each.

    A tick publishes all its files or none: each is written under a temp name, and they are
    renamed into place only once every one of them is complete (staging.publish_all).
    """
    datasets = nightly_datasets(run.config.nightly_datasets)
    exports = await export_datasets(
        run, datasets=datasets, fmt="csv", compress=True, since=None, prefix=NIGHTLY_PREFIX
    )
    deleted: list[str] = []
    for export in exports:
        deleted += await asyncio.to_thread(
            prune,  # files, or objects when the export dir is in a bucket
            result_directory(run.config.export_dir, export.path),
            prefix=NIGHTLY_PREFIX,
            dataset=export.dataset,
            keep=payload.keep or run.config.export_keep,
        )
    return NightlyResult(exports=exports, deleted=deleted)
