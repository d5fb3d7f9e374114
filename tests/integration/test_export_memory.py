"""Exports run in constant memory: an export process's peak RSS does not grow with the rows.

Each export runs in a child process (this module's `__main__`) whose peak RSS (Linux's VmHWM) is
reset once the imports are done, so the peak is the export's own; the same table is exported at
N rows and at 5N rows, both many times the batch size. Nested exports (customers with their
accounts, `include=["accounts"]`) likewise at 100k and 500k customers.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.exports.stream import BATCH_ROWS
from worker.runner import RunHandle

ROOT = Path(__file__).resolve().parents[2]
N = 200_000
GROWTH = 1.2  # what the export adds to RSS at 5N may exceed what it adds at N by 20%...
SLACK_MB = 4.0  # ...plus a few MB of allocator noise
CEILING_MB = 150.0
# COPY with gzip; JSON Lines read by heap pages; JSON Lines read row by row (with `since`);
# incremental exports (the rows added since the feed's previous export) as COPY and JSON Lines.
INCREMENTAL = "incremental"
CASES = [
    ("csv", True, None),
    ("jsonl", False, None),
    ("jsonl", False, "2000-01-01T00:00:00Z"),
    ("csv", True, INCREMENTAL),
    ("jsonl", False, INCREMENTAL),
]


async def add_customers(engine: AsyncEngine, *, first: int, last: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "insert into customers (external_id, email, full_name, country, created_at,"
                " updated_at)"
                " select 'C' || g, 'user' || g || '@example.com', 'Customer Number ' || g, 'US',"
                " now() - g * interval '1 second', now() - g * interval '1 second'"
                " from generate_series(cast(:first as bigint), cast(:last as bigint)) g"
            ),
            {"first": first, "last": last},
        )
        await conn.execute(text("analyze customers"))


async def export_in_child(
    database_url: str,
    export_dir: Path,
    *,
    fmt: str,
    compress: bool,
    since: str | None,
    include: str = "",
) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.test_export_memory",
        database_url,
        str(export_dir),
        fmt,
        "gzip" if compress else "plain",
        since or "",
        include,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    await asyncio.to_thread(Path(report["path"]).unlink)  # a 1M-row file is 100-200 MB
    return report


@pytest.mark.timeout(240)
async def test_peak_memory_does_not_grow_with_rows(
    engine: AsyncEngine, database_url: str, clean_db: None, tmp_path: Path
) -> None:
    assert BATCH_ROWS * 10 <= N
    peaks: dict[tuple[str, bool, str | None], list[dict[str, Any]]] = {case: [] for case in CASES}
    for fmt, compress, since in CASES:
        if since == INCREMENTAL:  # each feed's first export, of the empty table
            report = await export_in_child(
                database_url, tmp_path, fmt=fmt, compress=compress, since=since
            )
            assert report["rows"] == 0
    for first, last in ((1, N), (N + 1, 5 * N)):
        await add_customers(engine, first=first, last=last)
        for fmt, compress, since in CASES:
            report = await export_in_child(
                database_url, tmp_path, fmt=fmt, compress=compress, since=since
            )
            assert report["rows"] == (last - first + 1 if since == INCREMENTAL else last)
            peaks[(fmt, compress, since)].append(report)

    for (fmt, compress, since), (small, large) in peaks.items():
        mode = {None: "", INCREMENTAL: " incremental"}.get(since, " since")
        summary = (
            f"{fmt}{' gzip' if compress else ''}{mode}:"
            f" peak RSS {small['peak_mb']:.1f} MB at {small['rows']:,} rows"
            f" (export +{small['peak_mb'] - small['base_mb']:.1f} MB, {small['seconds']:.2f} s),"
            f" {large['peak_mb']:.1f} MB at {large['rows']:,} rows"
            f" (export +{large['peak_mb'] - large['base_mb']:.1f} MB, {large['seconds']:.2f} s)"
        )
        print(summary)
        small_export = small["peak_mb"] - small["base_mb"]
        large_export = large["peak_mb"] - large["base_mb"]
        assert large_export <= small_export * GROWTH + SLACK_MB, summary
        assert large["peak_mb"] < CEILING_MB, summary


# Nested exports (customers with their accounts as ORM objects, jobs/exports/nested.py) are
# slower per row: fewer rows, still many partitions. 1.5 accounts per customer.
NESTED_N = 100_000
NESTED_SLACK_MB = 10.0


async def add_accounts(engine: AsyncEngine, *, first: int, last: int) -> None:
    """Accounts of customers `first`..`last` (add_customers' keys): two for odd ones, else one."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "insert into accounts (id, customer_external_id, currency, balance_cents)"
                " select a, 'C' || g, 'EUR', a"
                " from generate_series(cast(:first as bigint), cast(:last as bigint)) g,"
                " generate_series(2 * g - 1, 2 * g - 1 + g % 2) a"
            ),
            {"first": first, "last": last},
        )
        await conn.execute(text("analyze accounts"))


@pytest.mark.timeout(900)
async def test_nested_export_memory_does_not_grow_with_customers(
    engine: AsyncEngine, database_url: str, clean_db: None, tmp_path: Path
) -> None:
    from jobs.exports.nested import YIELD_PER

    assert YIELD_PER * 50 <= NESTED_N
    reports: list[dict[str, Any]] = []
    for first, last in ((1, NESTED_N), (NESTED_N + 1, 5 * NESTED_N)):
        await add_customers(engine, first=first, last=last)
        await add_accounts(engine, first=first, last=last)
        report = await export_in_child(
            database_url, tmp_path, fmt="jsonl", compress=False, since=None, include="accounts"
        )
        assert report["rows"] == last
        reports.append(report)
    small, large = reports
    small_export = small["peak_mb"] - small["base_mb"]
    large_export = large["peak_mb"] - large["base_mb"]
    summary = (
        f"jsonl with accounts: peak RSS {small['peak_mb']:.1f} MB at {small['rows']:,} customers"
        f" (export +{small_export:.1f} MB, {small['seconds']:.1f} s),"
        f" {large['peak_mb']:.1f} MB at {large['rows']:,}"
        f" (export +{large_export:.1f} MB, {large['seconds']:.1f} s)"
    )
    print(summary)
    assert large_export <= small_export * GROWTH + NESTED_SLACK_MB, summary
    assert large["peak_mb"] < CEILING_MB, summary


def _status_mb(field: str) -> float:
    status = Path("/proc/self/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith(field + ":")]
    return int(line.split()[1]) / 1024  # kB


def _reset_peak() -> None:
    """Start the peak (VmHWM) again from the current RSS, so imports do not hide the export."""
    Path("/proc/self/clear_refs").write_text("5")


async def _child(
    database_url: str,
    export_dir: Path,
    *,
    fmt: str,
    compress: bool,
    since: str | None,
    include: str = "",
) -> dict[str, Any]:
    from jobs.exports.job import export_dataset
    from jobs.models import ExportPayload
    from worker.context import AppContext
    from worker.db import create_engine, create_sessionmaker
    from worker.logging import configure_logging
    from worker.settings import Settings

    configure_logging("WARNING", "json")
    settings = Settings(DATABASE_URL=database_url, ETL_EXPORT_DIR=export_dir)
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))
        _reset_peak()
        base = _status_mb("VmRSS")
        app = AppContext(settings=settings, engine=engine, sessionmaker=create_sessionmaker(engine))
        run = RunHandle(app=app, job_id=uuid.uuid4().hex, job_try=1)
        fields: dict[str, Any] = {"dataset": "customers", "format": fmt, "compress": compress}
        if since == INCREMENTAL:
            fields["incremental"] = f"memory-{fmt}"
        else:
            fields["since"] = since
        if include:
            fields["include"] = include.split(",")
        started = time.perf_counter()
        result = await export_dataset.impl(run, ExportPayload.model_validate(fields))
        seconds = time.perf_counter() - started
    finally:
        await engine.dispose()
    peak = _status_mb("VmHWM")
    return {
        "rows": result.rows,
        "path": result.path,
        "base_mb": base,
        "peak_mb": peak,
        "seconds": seconds,
    }


if __name__ == "__main__":
    url, directory, fmt, compression, since, include = sys.argv[1:7]
    report = asyncio.run(
        _child(
            url,
            Path(directory),
            fmt=fmt,
            compress=compression == "gzip",
            since=since or None,
            include=include,
        )
    )
    print(json.dumps(report))
