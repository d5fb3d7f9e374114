"""Export: `export_dataset` (CSV and JSONL, plain and gzipped) against psql's \\copy to a file,
and the export process's peak RSS at N and 5xN rows.

Each export job runs in a fresh Python process (bench.job_run) so that its peak RSS is the
export's own and not the benchmark's; the time is taken inside that process, around the job. The
"via worker" rows run the service's arq worker in that process instead, on a queue the benchmark
filled through EtlClient. psql runs with the session setting the export gives its transaction
(TimeZone=UTC, bench.sessions).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench import sessions
from bench.context import BenchContext
from bench.data import insert_customers
from bench.harness import CEILING, BenchError, Measured, Row, compare, say
from bench.job_run import run_child
from bench.pgclient import timed_shell
from jobs.models import ExportPayload, ExportResult
from jobs.registry import get_dataset
from worker.client import EtlClient
from worker.redis import connect

# The baseline's gzip runs at the job's own level, so both spend the same effort compressing.
try:
    from jobs.exports.files import GZIP_LEVEL
except ImportError:  # a checkout whose export job does not state its level: zlib's default
    GZIP_LEVEL = 6

RSS_CEILING_MB = 150.0
RSS_GROWTH_CEILING = 1.2
FORMATS = (("csv", False, 0.8), ("csv", True, 0.8), ("jsonl", False, 0.5), ("jsonl", True, 0.5))
SETTINGS_NOTE = (
    f"psql runs with PGOPTIONS {sessions.describe(sessions.EXPORT)}, the setting export_dataset "
    "gives its transaction (SET LOCAL)"
)


async def child(bench: BenchContext, job: list[str]) -> dict[str, Any]:
    return await run_child(url=bench.url, import_dir=bench.settings.import_dir,
                           export_dir=bench.settings.export_dir,
                           log_file=bench.workdir / "jobs.log", job=job)  # fmt: skip


async def _check(raw: Any, rows: int) -> None:
    """The export wrote `rows` rows; its file is removed."""
    result = ExportResult.model_validate(raw)
    await asyncio.to_thread(Path(result.path).unlink, missing_ok=True)
    if result.rows != rows:
        raise BenchError(f"export_dataset wrote {result.rows} rows, expected {rows}")


async def run_export(bench: BenchContext, *, fmt: str, compress: bool, rows: int) -> Measured:
    report = await child(bench, ["export", "--format", fmt, *(["--compress"] if compress else [])])
    await _check(report["result"], rows)
    return Measured(seconds=report["seconds"], rows=rows, peak_rss_mb=report["peak_rss_mb"])


async def export_via_worker(bench: BenchContext, *, fmt: str, rows: int) -> Measured:
    """One export job enqueued with EtlClient and run by the service's worker in a process of its
    own (its peak RSS is the worker's)."""
    queue = bench.queue_name()
    settings = bench.settings.model_copy(update={"queue_name": queue})
    assert settings.redis_url is not None
    pool = await connect(settings)
    try:
        client = EtlClient.from_redis(pool, settings)
        [handle] = await client.enqueue_many([ExportPayload(dataset="customers", format=fmt)])
        report = await child(
            bench, ["worker", "--redis-url", settings.redis_url, "--queue", queue, "--jobs", "1"]
        )
        await _check(await handle.result(timeout=30), rows)
    finally:
        await pool.aclose()
    return Measured(seconds=report["seconds"], rows=rows, peak_rss_mb=report["peak_rss_mb"])


async def psql_export(bench: BenchContext, *, compress: bool, rows: int) -> Measured:
    columns = ", ".join(get_dataset("customers").export_columns)
    target = "stdout" if compress else f"'{bench.workdir / 'psql-export.csv'}'"
    copy = f"\\copy (select {columns} from customers) to {target} with (format csv, header)"
    client = bench.client.with_settings(sessions.EXPORT)
    pipeline = [client.psql_command("-c", copy)]
    output = None
    if compress:
        pipeline.append(["gzip", f"-{GZIP_LEVEL}"])
        output = bench.workdir / "psql-export.csv.gz"
    try:
        return await timed_shell(client, pipeline=pipeline, rows=rows, output=output)
    finally:
        for name in ("psql-export.csv", "psql-export.csv.gz"):
            (bench.workdir / name).unlink(missing_ok=True)


def _label(fmt: str, compress: bool) -> str:
    return fmt + (f" gzip -{GZIP_LEVEL}" if compress else "")


async def _formats(bench: BenchContext, *, rows: int, rounds: int, size: str) -> list[Row]:
    out: list[Row] = []
    for fmt, compress, target in FORMATS:
        if size != "N" and compress:
            continue  # the larger size is there for memory; plain files show it

        async def job(fmt: str = fmt, compress: bool = compress) -> Measured:
            return await run_export(bench, fmt=fmt, compress=compress, rows=rows)

        async def baseline(compress: bool = compress) -> Measured:
            return await psql_export(bench, compress=compress, rows=rows)

        out.append(
            await compare(
                scenario=f"export {_label(fmt, compress)}, {size} rows",
                rows=rows,
                rounds=rounds,
                subject=job,
                baseline_name=f"psql \\copy csv{f' | gzip -{GZIP_LEVEL}' if compress else ''}",
                baseline=baseline,
                target=target,
                note=SETTINGS_NOTE,
            )
        )
    return out


async def _via_worker(bench: BenchContext, *, rows: int) -> list[Row]:
    out: list[Row] = []
    for fmt, compress, target in FORMATS:
        if compress:
            continue

        async def job(fmt: str = fmt) -> Measured:
            return await export_via_worker(bench, fmt=fmt, rows=rows)

        async def baseline() -> Measured:
            return await psql_export(bench, compress=False, rows=rows)

        out.append(
            await compare(
                scenario=f"export {fmt}, N rows, via worker",
                rows=rows,
                rounds=bench.rounds,
                subject=job,
                baseline_name="psql \\copy csv",
                baseline=baseline,
                target=target,
                note=(
                    "one job enqueued with EtlClient and run by the service's arq worker (burst "
                    "mode, max_jobs=1) in a process of its own, timed from the end of its "
                    "start-up: polling, decoding, heartbeat, progress and the result's write "
                    f"included; peak RSS is that worker process's; {SETTINGS_NOTE}"
                ),
            )
        )
    return out


def _growth(fmt: str, small: Row, large: Row, n: int) -> Row:
    row = Row(
        scenario=f"export {fmt} peak RSS, 5xN vs N rows",
        rows=5 * n,
        baseline=f"peak RSS at N = {n:,} rows",
        target=RSS_GROWTH_CEILING,
        target_is_ceiling=True,
        peak_rss_mb=large.peak_rss_mb,
    )
    if small.peak_rss_mb is None or large.peak_rss_mb is None:
        row.note = "error: no peak RSS measured (the export failed)"
        return row
    row.ratio = large.peak_rss_mb / small.peak_rss_mb
    worst = max(small.peak_rss_mb, large.peak_rss_mb)
    verdict = "met" if worst < RSS_CEILING_MB else "MISSED"
    row.note = (
        f"ratio is peak RSS at 5xN over N ({large.peak_rss_mb:.1f} / {small.peak_rss_mb:.1f} MB), "
        f"{CEILING}; peak RSS under {RSS_CEILING_MB:.0f} MB: {verdict}"
    )
    return row


async def scenarios(bench: BenchContext) -> list[Row]:
    n = bench.rows
    say(f"export: filling customers with {n:,} rows")
    await bench.reset(insert_customers(first=1, count=n))
    at_n = await _formats(bench, rows=n, rounds=bench.rounds, size="N")
    at_n += await _via_worker(bench, rows=n)
    say(f"export: filling customers with {5 * n:,} rows")
    await bench.reset(insert_customers(first=1, count=5 * n))
    # One round: these runs are there for memory, and at 5xN they are long.
    at_5n = await _formats(bench, rows=5 * n, rounds=1, size="5xN")
    await bench.reset()
    growth = [
        _growth(fmt, small, large, n)
        for fmt in ("csv", "jsonl")
        for small in at_n
        for large in at_5n
        if small.scenario == f"export {fmt}, N rows" and large.scenario == f"export {fmt}, 5xN rows"
    ]
    return at_n + at_5n + growth
