"""Import: `import_file` (mode=insert) against psql's \\copy and, when installed, pgloader."""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.context import BenchContext
from bench.data import CUSTOMER_COLUMNS, insert_customers, write_customers_csv
from bench.harness import (
    Baseline,
    BenchError,
    Measured,
    Row,
    compare,
    compare_all,
    say,
    stopwatch,
)
from bench.pgclient import PgClient, timed_psql, timed_shell
from jobs.imports.job import import_file
from jobs.models import ImportResult
from worker.runner import execute

FILE_NAME = "customers.csv"


async def run_import(
    bench: BenchContext, *, mode: str, rows: int, inserted: int, updated: int
) -> Measured:
    """One `import_file` job, called as arq calls it; its counts must be the expected ones."""
    ctx = bench.job_ctx()
    with stopwatch() as elapsed:
        raw = await execute(import_file, ctx, dataset="customers", path=FILE_NAME, mode=mode)
    result = ImportResult.model_validate(raw)
    got = (result.rows_read, result.inserted, result.updated, result.rejected)
    if got != (rows, inserted, updated, 0):
        raise BenchError(
            f"import_file mode={mode} read/inserted/updated/rejected {got}, "
            f"expected {(rows, inserted, updated, 0)}"
        )
    return Measured(seconds=elapsed[0], rows=rows)


def copy_command(path: Path) -> str:
    return (
        f"\\copy customers({', '.join(CUSTOMER_COLUMNS)}) from '{path}' with (format csv, header)"
    )


def _pgloader_target(client: PgClient) -> str:
    user = client.user or "postgres"
    password = f":{client.password}" if client.password else ""
    host = client.host or "localhost"
    if host.startswith("/"):
        host = f"unix:{host}"
    port = f":{client.port}" if client.port else ""
    return f"postgresql://{user}{password}@{host}{port}/{client.dbname}?tablename=customers"


def pgloader_baseline(bench: BenchContext, path: Path) -> Baseline | Row:
    """pgloader loading the same file, or a row saying why it is skipped."""
    scenario = "import mode=insert, empty table, vs pgloader"
    pgloader = shutil.which("pgloader")
    if pgloader is None:
        return Row(
            scenario=scenario,
            rows=bench.rows,
            baseline="pgloader",
            target=5.0,
            note="skipped: pgloader is not installed on this machine",
        )

    async def load() -> Measured:
        argv = [pgloader, "--type", "csv", "--field", ",".join(CUSTOMER_COLUMNS),
                "--with", "skip header = 1", "--with", "fields optionally enclosed by '\"'",
                "--with", "fields terminated by ','", str(path),
                _pgloader_target(bench.client)]  # fmt: skip
        return await timed_shell(bench.client, pipeline=[argv], rows=bench.rows)

    return Baseline(scenario=scenario, name="pgloader", run=load, target=5.0)


async def scenarios(bench: BenchContext) -> list[Row]:
    n = bench.rows
    path = bench.settings.import_dir / FILE_NAME
    say(f"import: writing {n:,} customers to {path}")
    await write_customers_csv(bench.client, path, first=1, count=n)

    async def copy() -> Measured:
        return await timed_psql(bench.client, command=copy_command(path), rows=n)

    async def job() -> Measured:
        return await run_import(bench, mode="insert", rows=n, inserted=n, updated=0)

    async def empty() -> None:
        await bench.reset()

    async def half_full() -> None:
        # Other keys than the file's: the import adds N rows to a table already holding N.
        await bench.reset(insert_customers(first=1, count=n, key_prefix="p"))

    pgloader = pgloader_baseline(bench, path)
    baselines = [Baseline("import mode=insert, empty table", "psql \\copy", copy, 0.7)]
    if isinstance(pgloader, Baseline):
        baselines.append(pgloader)
    rows = await compare_all(rows=n, rounds=bench.rounds, prepare=empty, subject=job,
                             baselines=baselines)  # fmt: skip
    if isinstance(pgloader, Row):
        rows.append(pgloader)
    rows.append(
        await compare(
            scenario="import mode=insert, table holding N other rows",
            rows=n,
            rounds=bench.rounds,
            prepare=half_full,
            subject=job,
            baseline_name="psql \\copy",
            baseline=copy,
            target=None,
        )
    )
    return rows
