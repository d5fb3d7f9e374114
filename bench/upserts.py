"""Upsert: `import_file` (mode=upsert) and `upsert_rows` against psql's staged upsert, and
`upsert_rows` against a plain SQLAlchemy executemany of the same statement.

Every run starts from a table holding every other key of the file (with older values), so half the
rows are inserts and half are real updates. psql's staged upsert runs with the session settings of
the job it is held against (bench.sessions): import_file's work_mem and TimeZone, none for
upsert_rows, which sets none.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert

from bench import sessions
from bench.context import BenchContext
from bench.data import CUSTOMER_COLUMNS, insert_customers, read_csv_rows, write_customers_csv
from bench.harness import (
    Baseline,
    BenchError,
    Measured,
    Row,
    compare,
    compare_all,
    plural,
    say,
    stopwatch,
)
from bench.imports import SETTINGS_NOTE, WORKER_NOTE, import_via_worker, run_import
from bench.pgclient import timed_psql
from bench.workers import run_via_worker
from jobs.models import MAX_UPSERT_ROWS, UpsertResult, UpsertRowsPayload
from jobs.schema import customers
from jobs.upserts import upsert_rows
from worker.runner import execute

FILE_NAME = "customers.csv"


def staged_upsert_script(path: Path) -> str:
    """What a careful person does with psql alone: COPY into a temp table, one INSERT … SELECT."""
    columns = ", ".join(CUSTOMER_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in CUSTOMER_COLUMNS if c != "external_id")
    return f"""\\set ON_ERROR_STOP on
begin;
create temp table stage on commit drop as select {columns} from customers with no data;
\\copy stage from '{path}' with (format csv, header)
insert into customers ({columns})
select {columns} from stage
on conflict (external_id) do update set {updates}, updated_at = now();
commit;
"""


def executemany_statement() -> Any:
    """The job's upsert as SQLAlchemy writes it for one row at a time: insert() ON CONFLICT on the
    natural key, updating the other columns only when one of them differs (as the job does)."""
    stmt = pg_insert(customers)
    changed = [c for c in CUSTOMER_COLUMNS if c != "external_id"]
    updates: dict[str, Any] = {c: stmt.excluded[c] for c in changed}
    updates["updated_at"] = func.now()
    return stmt.on_conflict_do_update(
        index_elements=[customers.c.external_id],
        set_=updates,
        where=tuple_(*(customers.c[c] for c in changed)).is_distinct_from(
            tuple_(*(stmt.excluded[c] for c in changed))
        ),
    )


def chunks(rows: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [rows[start : start + size] for start in range(0, len(rows), size)]


async def scenarios(bench: BenchContext) -> list[Row]:
    n = bench.rows
    present = n // 2
    path = bench.settings.import_dir / FILE_NAME
    if not path.exists():
        say(f"upsert: writing {n:,} customers to {path}")
        await write_customers_csv(bench.client, path, first=1, count=n)
    script = bench.workdir / "staged_upsert.sql"
    script.write_text(staged_upsert_script(path))
    payload_rows = read_csv_rows(path)
    typed_rows = [
        {**row, "created_at": datetime.fromisoformat(row["created_at"])} for row in payload_rows
    ]

    import_client = bench.client.with_settings(sessions.IMPORT)
    rows_client = bench.client.with_settings(sessions.UPSERT_ROWS)

    async def half_present() -> None:
        await bench.reset(insert_customers(first=2, count=present, step=2, variant="old"))

    async def staged() -> Measured:
        return await timed_psql(import_client, script=script, rows=n)

    async def staged_plain() -> Measured:
        return await timed_psql(rows_client, script=script, rows=n)

    async def import_upsert() -> Measured:
        return await run_import(bench, mode="upsert", rows=n, inserted=n - present, updated=present)

    async def import_upsert_via_worker() -> Measured:
        return await import_via_worker(
            bench, mode="upsert", rows=n, inserted=n - present, updated=present
        )

    def check(results: list[UpsertResult]) -> None:
        rejected = sum(r.rejected for r in results)
        if rejected:
            raise BenchError(f"upsert_rows rejected {rejected} rows")
        got = (sum(r.inserted for r in results), sum(r.updated for r in results))
        if got != (n - present, present):
            raise BenchError(
                f"upsert_rows inserted/updated {got}, expected {(n - present, present)}"
            )

    async def jobs() -> Measured:
        results: list[UpsertResult] = []
        with stopwatch() as elapsed:
            for chunk in chunks(payload_rows, MAX_UPSERT_ROWS):
                raw = await execute(upsert_rows, bench.job_ctx(), dataset="customers", rows=chunk)
                results.append(UpsertResult.model_validate(raw))
        check(results)
        return Measured(seconds=elapsed[0], rows=n)

    async def jobs_via_worker() -> Measured:
        requests = [
            UpsertRowsPayload(dataset="customers", rows=chunk)
            for chunk in chunks(payload_rows, MAX_UPSERT_ROWS)
        ]
        seconds, results = await run_via_worker(
            bench.settings, queue_name=bench.queue_name(), requests=requests
        )
        check(results)
        return Measured(seconds=seconds, rows=n)

    statement = executemany_statement()
    executemany_name = f"SQLAlchemy executemany, {MAX_UPSERT_ROWS:,}-row transactions"
    executemany_note = (
        "executemany of the job's statement (ON CONFLICT DO UPDATE when a column differs) "
        "through the job's own engine and settings, one transaction per chunk of rows"
    )

    async def executemany() -> Measured:
        with stopwatch() as elapsed:
            for chunk in chunks(typed_rows, MAX_UPSERT_ROWS):
                async with bench.app.engine.begin() as conn:
                    await conn.execute(statement, chunk)
        if await bench.count("customers") != n:
            raise BenchError("executemany left a different number of customers than expected")
        return Measured(seconds=elapsed[0], rows=n)

    return [
        await compare(
            scenario="import mode=upsert, half the keys present",
            rows=n,
            rounds=bench.rounds,
            prepare=half_present,
            subject=import_upsert,
            baseline_name="psql staged upsert",
            baseline=staged,
            target=1.1,
            note=SETTINGS_NOTE,
        ),
        await compare(
            scenario="import mode=upsert, half the keys present, via worker",
            rows=n,
            rounds=bench.rounds,
            prepare=half_present,
            subject=import_upsert_via_worker,
            baseline_name="psql staged upsert",
            baseline=staged,
            target=1.1,
            note=f"{WORKER_NOTE}; {SETTINGS_NOTE}",
        ),
        *await compare_all(
            rows=n,
            rounds=bench.rounds,
            prepare=half_present,
            subject=jobs,
            baselines=[
                Baseline(
                    scenario=f"upsert_rows, {MAX_UPSERT_ROWS:,}-row jobs, half present",
                    name="psql staged upsert",
                    run=staged_plain,
                    target=None,
                    note="psql on the server's default settings, as upsert_rows sets none",
                ),
                Baseline(
                    scenario=f"upsert_rows, {MAX_UPSERT_ROWS:,}-row jobs, vs executemany",
                    name=executemany_name,
                    run=executemany,
                    target=2.0,
                    note=executemany_note,
                ),
            ],
        ),
        await compare(
            scenario=f"upsert_rows, {MAX_UPSERT_ROWS:,}-row jobs, via worker, vs executemany",
            rows=n,
            rounds=bench.rounds,
            prepare=half_present,
            subject=jobs_via_worker,
            baseline_name=executemany_name,
            baseline=executemany,
            target=2.0,
            note=(
                f"{plural(-(-n // MAX_UPSERT_ROWS), 'job')} enqueued with EtlClient.enqueue_many "
                "(not timed) and run one at a time by the service's arq worker in burst mode, "
                "timed from the end of its start-up: each job's rows decoded from Redis, "
                f"heartbeat and result write included; {executemany_note}"
            ),
        ),
    ]
