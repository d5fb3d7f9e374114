"""Incremental export: a feed's next export after a tenth of the rows changed, against psql's
\\copy of the same rows selected the way one would by hand, by their `updated_at`.

Each run starts from the same state: the rows with `id % 10 = 0` are updated (a new full name
and `updated_at`) and the table vacuumed, untimed. The job's side first takes its feed's
previous export (a new feed's first export holds every row; untimed), so the timed export
carries exactly the updated rows, found by the transaction ids the feed stored (jobs/exports/
xids.py). The baseline selects them with `where updated_at > <a time before the update>`, which
may use the index on `updated_at`; the feed reads the table by pages. Both write plain CSV.
Deletes are not carried by a feed, so the change is updates only.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

from bench import sessions
from bench.context import BenchContext
from bench.database import fetchval
from bench.harness import BenchError, Measured, Row, compare
from bench.job_run import run_child
from bench.pgclient import timed_shell
from jobs.models import ExportResult
from jobs.registry import get_dataset

TARGET = 0.8
CHANGED_EVERY = 10
"""One row in this many changes between two exports of the feed."""
NOTE = (
    f"one row in {CHANGED_EVERY} updated since the feed's previous export; the job finds them by "
    "transaction id and reads the table by pages, psql selects them by updated_at (index "
    f"available); PGOPTIONS {sessions.describe(sessions.EXPORT)} as the job's SET LOCAL"
)
_feeds = itertools.count(1)


async def _change(bench: BenchContext) -> str:
    """Update one row in CHANGED_EVERY; the time before the update, as text."""
    mark = await fetchval(bench.url, "select clock_timestamp()::text")
    await bench.sql(
        f"update customers set full_name = full_name || '~', updated_at = now() "
        f"where id % {CHANGED_EVERY} = 0",
        "vacuum analyze customers",
    )
    return str(mark)


async def _feed_export(bench: BenchContext, feed: str) -> tuple[ExportResult, dict[str, Any]]:
    report = await run_child(url=bench.url, import_dir=bench.settings.import_dir,
                             export_dir=bench.settings.export_dir,
                             log_file=bench.workdir / "jobs.log",
                             job=["export", "--format", "csv", "--incremental", feed])  # fmt: skip
    result = ExportResult.model_validate(report["result"])
    await asyncio.to_thread(Path(result.path).unlink, missing_ok=True)
    return result, report


async def run_incremental(bench: BenchContext, *, changed: int) -> Measured:
    feed = f"bench-{next(_feeds)}"
    await _feed_export(bench, feed)  # the feed's first export: every row (untimed)
    await _change(bench)
    result, report = await _feed_export(bench, feed)
    if result.rows != changed:
        raise BenchError(f"the incremental export carried {result.rows} rows, expected {changed}")
    return Measured(seconds=report["seconds"], rows=changed, peak_rss_mb=report["peak_rss_mb"])


async def psql_changed(bench: BenchContext, *, changed: int) -> Measured:
    mark = await _change(bench)
    columns = ", ".join(get_dataset("customers").export_columns)
    target = bench.workdir / "psql-changed.csv"
    copy = (
        f"\\copy (select {columns} from customers where updated_at > '{mark}') "
        f"to '{target}' with (format csv, header)"
    )
    client = bench.client.with_settings(sessions.EXPORT)
    try:
        measured = await timed_shell(
            client, pipeline=[client.psql_command("-c", copy)], rows=changed
        )
        written = await asyncio.to_thread(_data_lines, target)
    finally:
        target.unlink(missing_ok=True)
    if written != changed:
        raise BenchError(f"psql wrote {written} changed rows, expected {changed}")
    return measured


def _data_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle) - 1  # less the header


async def incremental(bench: BenchContext, *, rows: int, rounds: int) -> Row:
    """The scenario, on a customers table of `rows` rows with ids 1..rows."""
    changed = rows // CHANGED_EVERY

    async def job() -> Measured:
        return await run_incremental(bench, changed=changed)

    async def baseline() -> Measured:
        return await psql_changed(bench, changed=changed)

    return await compare(
        scenario="export csv incremental, N/10 rows changed",
        rows=changed,
        rounds=rounds,
        subject=job,
        baseline_name="psql \\copy where updated_at > mark",
        baseline=baseline,
        target=TARGET,
        note=NOTE,
    )
