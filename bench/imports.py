"""Import: `import_file` (mode=insert) against psql's \\copy and, when installed, pgloader.

Every psql baseline runs with the session settings the job gives its transaction (bench.sessions:
work_mem and TimeZone, through PGOPTIONS). Two files: the clean one, which every row of is loaded
as written, and a realistic one (bench.data: mixed case, offsets, quoted commas, 2% refused) whose
baseline loads the cleaned file, i.e. the rows the job keeps in the form the job stores them.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import sessions
from bench.context import BenchContext
from bench.data import (
    CUSTOMER_COLUMNS,
    insert_customers,
    realistic_cleaned_select,
    realistic_rejects,
    write_customers_csv,
    write_realistic_csv,
)
from bench.database import fetchval
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
from bench.moto import local_s3, s3_settings, unavailable
from bench.pgclient import PgClient, timed_psql, timed_shell
from bench.workers import run_via_worker
from jobs.imports.job import import_file
from jobs.models import ImportFilePayload, ImportResult
from worker.context import CTX_KEY, AppContext
from worker.runner import execute

FILE_NAME = "customers.csv"
REALISTIC_NAME = "customers-realistic.csv"
CLEANED_NAME = "customers-realistic-cleaned.csv"
SETTINGS_NOTE = (
    f"psql runs with PGOPTIONS {sessions.describe(sessions.IMPORT)}, the settings import_file "
    "gives its transaction (SET LOCAL)"
)
WORKER_NOTE = (
    "one job enqueued with EtlClient and run by the service's arq worker in burst mode "
    "(max_jobs=1), timed from the end of its start-up: polling, decoding, heartbeat, progress "
    "and the result's write included"
)


def check_counts(
    result: ImportResult, *, mode: str, rows: int, inserted: int, updated: int, rejected: int
) -> None:
    got = (result.rows_read, result.inserted, result.updated, result.rejected)
    expected = (rows, inserted, updated, rejected)
    if got != expected:
        raise BenchError(
            f"import_file mode={mode} read/inserted/updated/rejected {got}, expected {expected}"
        )


async def run_import(
    bench: BenchContext,
    *,
    mode: str,
    rows: int,
    inserted: int,
    updated: int,
    rejected: int = 0,
    path: str = FILE_NAME,
) -> Measured:
    """One `import_file` job, called as arq calls it; its counts must be the expected ones."""
    ctx = bench.job_ctx()
    with stopwatch() as elapsed:
        raw = await execute(import_file, ctx, dataset="customers", path=path, mode=mode)
    result = ImportResult.model_validate(raw)
    check_counts(
        result, mode=mode, rows=rows, inserted=inserted, updated=updated, rejected=rejected
    )
    return Measured(seconds=elapsed[0], rows=rows)


async def import_via_worker(
    bench: BenchContext, *, mode: str, rows: int, inserted: int, updated: int
) -> Measured:
    """The same job through a real worker (see WORKER_NOTE)."""
    payload = ImportFilePayload(dataset="customers", path=FILE_NAME, mode=mode)
    seconds, results = await run_via_worker(
        bench.settings, queue_name=bench.queue_name(), requests=[payload]
    )
    check_counts(results[0], mode=mode, rows=rows, inserted=inserted, updated=updated, rejected=0)
    return Measured(seconds=seconds, rows=rows)


_CUSTOMER_TEXT = (
    "concat_ws('|', external_id, email, full_name, country, "
    "to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'))"
)


async def customers_digest(bench: BenchContext) -> str:
    """md5 of every stored customer's file columns, in key order (created_at as UTC text)."""
    query = (
        f"select md5(coalesce(string_agg({_CUSTOMER_TEXT}, E'\\n' order by external_id), '')) "
        "from customers"
    )
    return str(await fetchval(bench.url, query))


async def expected_digest(bench: BenchContext, select: str) -> str:
    """The same digest of a generated SELECT whose created_at is already that UTC text."""
    text = "concat_ws('|', external_id, email, full_name, country, created_at)"
    query = (
        f"select md5(coalesce(string_agg({text}, E'\\n' order by external_id), '')) "
        f"from ({select}) as rows"
    )
    return str(await fetchval(bench.url, query))


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
    client = bench.client.with_settings(sessions.IMPORT)

    async def copy() -> Measured:
        return await timed_psql(client, command=copy_command(path), rows=n)

    async def job() -> Measured:
        return await run_import(bench, mode="insert", rows=n, inserted=n, updated=0)

    async def via_worker() -> Measured:
        return await import_via_worker(bench, mode="insert", rows=n, inserted=n, updated=0)

    async def empty() -> None:
        await bench.reset()

    async def half_full() -> None:
        # Other keys than the file's: the import adds N rows to a table already holding N.
        await bench.reset(insert_customers(first=1, count=n, key_prefix="p"))

    pgloader = pgloader_baseline(bench, path)
    baselines = [
        Baseline("import mode=insert, empty table", "psql \\copy", copy, 1.0, note=SETTINGS_NOTE)
    ]
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
            note=SETTINGS_NOTE,
        )
    )
    rows.append(await realistic(bench, client, prepare=empty))
    rows.append(
        await compare(
            scenario="import mode=insert, empty table, via worker",
            rows=n,
            rounds=bench.rounds,
            prepare=empty,
            subject=via_worker,
            baseline_name="psql \\copy",
            baseline=copy,
            target=1.0,
            note=f"{WORKER_NOTE}; {SETTINGS_NOTE}",
        )
    )
    rows.append(await from_s3(bench, path=path, prepare=empty, local=job))
    return rows


async def from_s3(
    bench: BenchContext,
    *,
    path: Path,
    prepare: Callable[[], Awaitable[None]],
    local: Callable[[], Awaitable[Measured]],
) -> Row:
    """The clean file's import from a bucket on a local moto server (started here), against the
    same job reading the local file: what streaming the object costs."""
    n = bench.rows
    scenario = "import mode=insert, empty table, from S3 (moto)"
    baseline_name = "import_file from the local file"
    missing = unavailable()
    if missing:
        return Row(scenario=scenario, rows=n, baseline=baseline_name, note=f"skipped: {missing}")
    with local_s3() as s3:
        bucket = "bench"
        say(f"import: uploading {path.name} to s3://{bucket}/inbox/ on a local moto server")
        client = s3.client()
        await asyncio.to_thread(client.create_bucket, Bucket=bucket)
        await asyncio.to_thread(client.upload_file, str(path), bucket, f"inbox/{FILE_NAME}")
        app = bench.app
        settings = s3_settings(bench.settings, s3, bucket)
        s3_app = AppContext(settings=settings, engine=app.engine, sessionmaker=app.sessionmaker)

        async def job() -> Measured:
            ctx = {**bench.job_ctx(), CTX_KEY: s3_app}
            with stopwatch() as elapsed:
                raw = await execute(import_file, ctx, dataset="customers", path=FILE_NAME,
                                    mode="insert")  # fmt: skip
            check_counts(ImportResult.model_validate(raw), mode="insert", rows=n, inserted=n,
                         updated=0, rejected=0)  # fmt: skip
            return Measured(seconds=elapsed[0], rows=n)

        return await compare(
            scenario=scenario,
            rows=n,
            rounds=bench.rounds,
            prepare=prepare,
            subject=job,
            baseline_name=baseline_name,
            baseline=local,
            target=None,
            note=(
                "the object is read by one streaming GET (obstore) from moto's server on this "
                "machine, in blocks, by the read-ahead thread; moto is a Python server, so this "
                "shows the client's cost, not a real store's throughput"
            ),
        )


async def realistic(
    bench: BenchContext, client: PgClient, *, prepare: Callable[[], Awaitable[None]]
) -> Row:
    """The realistic file through the job against psql loading the cleaned file.

    Both sides' stored rows are checked once (after their first run) against the digest of the
    cleaned rows as generated, so the cleaned file is what the job would have stored.
    """
    n = bench.rows
    raw = bench.settings.import_dir / REALISTIC_NAME
    cleaned = bench.settings.import_dir / CLEANED_NAME
    refused = realistic_rejects(first=1, count=n)
    say(f"import: writing a realistic file of {n:,} customers ({refused:,} refused) and its "
        "cleaned copy")  # fmt: skip
    await write_realistic_csv(bench.client, raw, cleaned, first=1, count=n)
    want = await expected_digest(bench, realistic_cleaned_select(first=1, count=n))
    checked: set[str] = set()

    async def check(side: str) -> None:
        if side not in checked:
            got = await customers_digest(bench)
            if got != want:
                raise BenchError(f"{side} stored other rows than the cleaned file holds")
            checked.add(side)

    async def job() -> Measured:
        measured = await run_import(bench, mode="insert", rows=n, inserted=n - refused,
                                    updated=0, rejected=refused, path=REALISTIC_NAME)  # fmt: skip
        await check("import_file")
        return measured

    async def copy_cleaned() -> Measured:
        measured = await timed_psql(client, command=copy_command(cleaned), rows=n)
        await check("psql \\copy")
        return measured

    return await compare(
        scenario="import mode=insert, realistic file, 2% refused, empty table",
        rows=n,
        rounds=bench.rounds,
        prepare=prepare,
        subject=job,
        baseline_name="psql \\copy of the cleaned file",
        baseline=copy_cleaned,
        target=0.8,
        note=(
            "the job reads a messy file (mixed-case e-mails, timestamps with offsets, quoted "
            "names with commas, lower-case and padded countries; 2% of rows refused: no @, bad "
            "country, empty required field) and records the refused rows in import_rejects; "
            "psql loads the cleaned file, the rows the job keeps already in the form it stores "
            "them, so it skips validation, normalisation and reject records; both rates count "
            f"the file's N rows; both sides' stored rows checked equal (md5); {SETTINGS_NOTE}"
        ),
    )
