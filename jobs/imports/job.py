"""`import_file`: load a CSV file from the import directory into a dataset, all or nothing.

The file streams through COPY inside one transaction: the target shows every valid row or none.
Rows that break a rule are quarantined in `import_rejects` with their line number and reason; if
more than `max_reject_ratio` of the rows are rejected, nothing is loaded and the job fails.

Two ways in, both fed by jobs.imports.csvscan (clean lines untouched, the rest validated in Python):

- insert mode, when the file has every column the table needs and no reference to check: COPY
  straight into the table, as psql's \\copy would. A key already present, or repeated in the
  file, makes COPY fail; the attempt is rolled back to its savepoint and the file goes the other
  way. COPY is sent in batches, so a failing attempt is noticed after one batch, not at the end.
- otherwise: COPY into a temp table, check references there (accounts naming no customer), then
  one statement into the table (staging.py): MERGE for upsert, INSERT ... ON CONFLICT DO NOTHING
  for insert. A row equal to the stored one is left alone and counted as skipped (unchanged), so
  the same file imported twice leaves the same table and counts every row as skipped.

The import id is derived from arq's job id: a retry of the same job (after a crash, say) replaces
its own rejects, and a retry of an import that did commit returns the recorded result, if it asks
for the same import (record.py); the same job id for another import is an IdempotencyConflict.

Everything an import records (rows, rejects with their raw lines, the file's SHA-256) comes from
one read of the file: rejects SQL finds after COPY take their lines from the record spill the scan
wrote (spill.py), not from the file read again. No file is opened or read on the event loop: a
FIFO in the import directory would stop the whole worker (csvinput.open_regular).

With an `s3://` import dir, the file is an object under its prefix (paths.object_inside), read by
streaming GETs in the same threads; the first read fixes its version, so the rows and the digest
recorded come from one version of it (objects.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.schema import CreateTable

from jobs.db import driver_connection
from jobs.errors import InputFileError, TooManyRejects, TransientError, sqlstate_of
from jobs.imports import cleanlines
from jobs.imports.copying import copy_input, input_header
from jobs.imports.csvinput import file_sha256
from jobs.imports.csvscan import RowCheck, Scanner
from jobs.imports.merge import upsert_staged
from jobs.imports.objects import ObjectSource
from jobs.imports.record import Outcome, record, recorded, too_many
from jobs.imports.rejects import RejectLog
from jobs.imports.spill import RecordSpill
from jobs.imports.staging import (
    DEFAULT_NOW,
    STAGE_NAME,
    drop_unknown_references,
    insert_new,
    references,
    staging_table,
)
from jobs.models import ImportFilePayload, ImportResult
from jobs.paths import object_inside, resolve_inside
from jobs.registry import Dataset, get_dataset
from jobs.schema import import_rejects
from jobs.spec import JobRun, etl_job
from jobs.storage import ObjectPath

log = structlog.get_logger("jobs.imports")

WORK_MEM = "64MB"
FAST_PATH = True
"""Clean lines skip Python's checks; tests switch it off to check that both ways agree."""
_IMPORT_IDS = uuid.UUID("1b0c7a1e-6f55-4d4e-9a49-3c1f0c2f6a10")


def import_id_for(job_id: str) -> uuid.UUID:
    """The same job (every try of it) always gets the same import id."""
    return uuid.uuid5(_IMPORT_IDS, job_id) if job_id else uuid.uuid4()


@etl_job(name="import_file", payload=ImportFilePayload, result=ImportResult, timeout_s=3600)
async def import_file(run: JobRun, payload: ImportFilePayload) -> ImportResult:
    """Load a CSV (or gzipped CSV) file from ETL_IMPORT_DIR: every valid row, or none."""
    dataset = get_dataset(payload.dataset, writable=True)
    import_dir = run.config.import_dir
    path: Path | ObjectSource
    if isinstance(import_dir, ObjectPath):
        target = object_inside(import_dir, payload.path)
        name = target.relative_to(import_dir)
        path = ObjectSource(target, name=name)
    else:
        path = await asyncio.to_thread(resolve_inside, import_dir, payload.path)
        name = str(path.relative_to(await asyncio.to_thread(import_dir.resolve)))
    # A missing file or a bad header fails now, before a transaction is opened.
    try:
        header = await asyncio.to_thread(input_header, path, name=name, dataset=dataset)
    except InputFileError as exc:
        if not exc.context.get("missing"):
            raise
        # Named: whoever enqueued it may have meant a file on their own machine.
        raise InputFileError(f"{name}: no such file in the import directory {import_dir}") from None
    job = _Import(
        run=run,
        dataset=dataset,
        mode=payload.mode,
        max_reject_ratio=payload.max_reject_ratio,
        path=path,
        name=name,
        columns=header.columns,
        import_id=import_id_for(run.job_id),
    )
    return await job.execute()


@dataclass
class _Import:
    run: JobRun
    dataset: Dataset
    mode: str
    max_reject_ratio: float
    path: Path | ObjectSource
    """A file, or an object whose first read (the header's) fixed the version later reads get."""
    name: str
    columns: tuple[str, ...]
    import_id: uuid.UUID

    async def execute(self) -> ImportResult:
        bound = log.bind(import_id=str(self.import_id), dataset=self.dataset.name, file=self.name)
        error: TooManyRejects | None = None
        try:
            async with self.run.sessionmaker() as session, session.begin():
                conn = await session.connection()
                done = await self._recorded(conn)
                if done is not None:
                    bound.info("import.already_recorded")
                    return done
                driver = await driver_connection(conn)
                # Timestamps without an offset are UTC, as the row rules say.
                await conn.execute(text("SET LOCAL TimeZone = 'UTC'"))
                # Room for the hash join against the table and the sorts, for this import only.
                await conn.execute(text(f"SET LOCAL work_mem = '{WORK_MEM}'"))
                await conn.execute(
                    delete(import_rejects).where(import_rejects.c.import_id == self.import_id)
                )
                now: datetime = (await conn.execute(select(func.now()))).scalar_one()
                outcome = await self._direct(driver, now=now) if self._direct_fits() else None
                way = "direct"
                if outcome is None:
                    way = "staged"
                    outcome = await self._staged(conn, driver, now=now)
                try:
                    if outcome.failed:
                        await outcome.rejects.save(driver, failed=True)
                        error = too_many(outcome, limit=self.max_reject_ratio)
                    else:
                        await outcome.rejects.save(driver)
                        await record(conn, outcome, mode=self.mode)
                finally:
                    outcome.rejects.close()
                bound.info(
                    "import.loaded" if error is None else "import.refused",
                    way=way,
                    rows_read=outcome.rows_read,
                    rejected=outcome.rejects.count,
                )
        except IntegrityError as exc:
            if sqlstate_of(exc) == "23503":  # a referenced customer was deleted meanwhile
                raise TransientError(
                    f"{self.name}: a row it refers to was deleted during the import; retrying"
                ) from exc
            raise
        if error is not None:
            raise error
        return outcome.result()

    async def _recorded(self, conn: AsyncConnection) -> ImportResult | None:
        """The result of this import if it already committed; IdempotencyConflict if this job id
        was used for another import. The file is hashed only when there is a run row to compare."""
        found = await recorded(conn, self.import_id)
        if found is None:
            return None
        sha256 = await asyncio.to_thread(file_sha256, self.path, name=self.name)
        if not found.same(dataset=self.dataset.name, mode=self.mode, sha256=sha256):
            raise found.conflict(
                job_id=self.run.job_id,
                file=self.name,
                dataset=self.dataset.name,
                mode=self.mode,
                sha256=sha256,
            )
        return found.result

    # the two ways in

    def _direct_fits(self) -> bool:
        """Insert mode, no references to check, and every NOT NULL column without a default
        present in the file: COPY into the table itself can then do what the rules ask."""
        if self.mode != "insert" or references(self.dataset, self.columns):
            return False
        needed = {
            c.name
            for c in self.dataset.table.columns
            if not c.nullable and c.server_default is None and c.identity is None
        }
        return needed <= set(self.columns)

    async def _direct(self, driver: asyncpg.Connection, *, now: datetime) -> Outcome | None:
        scanner = self._scanner(now=now, fill_defaults=True)
        with _closed_on_error(self._reject_log()) as rejects:
            await driver.execute("SAVEPOINT import_direct")
            try:
                sha256 = await self._copy(
                    driver, table=self.dataset.table.name, scanner=scanner, rejects=rejects
                )
            except asyncpg.UniqueViolationError:
                # A key already in the table or repeated in the file: the other way handles both.
                await driver.execute("ROLLBACK TO SAVEPOINT import_direct")
                rejects.close()
                log.info("import.direct_copy_conflict", file=self.name, dataset=self.dataset.name)
                return None
            outcome = Outcome(
                import_id=self.import_id,
                dataset=self.dataset.name,
                file=self.name,
                rows_read=scanner.rows,
                inserted=scanner.forwarded,
                updated=0,
                skipped=0,
                rejects=rejects,
                sha256=sha256,
            )
            if outcome.over(self.max_reject_ratio):
                await driver.execute("ROLLBACK TO SAVEPOINT import_direct")
                outcome.failed = True
            else:
                await driver.execute("RELEASE SAVEPOINT import_direct")
            return outcome

    async def _staged(
        self, conn: AsyncConnection, driver: asyncpg.Connection, *, now: datetime
    ) -> Outcome:
        stage = staging_table(self.dataset, self.columns)
        await conn.execute(CreateTable(stage))
        refs = references(self.dataset, self.columns)
        scanner = self._scanner(now=now, fill_defaults=False, keep_raw=bool(refs))
        spill = RecordSpill() if refs else None
        with _closed_on_error(self._reject_log()) as rejects, spill or contextlib.nullcontext():
            sha256 = await self._copy(
                driver, table=STAGE_NAME, scanner=scanner, rejects=rejects, spill=spill
            )
            valid = scanner.forwarded
            for ref in refs:
                recs = list((await conn.execute(drop_unknown_references(stage, ref))).scalars())
                valid -= len(recs)
                assert spill is not None
                refused = spill.rejects(recs, line_of=scanner.line_of, reason=ref.reason)
                await asyncio.to_thread(rejects.add, refused)
            outcome = Outcome(
                import_id=self.import_id,
                dataset=self.dataset.name,
                file=self.name,
                rows_read=scanner.rows,
                inserted=0,
                updated=0,
                skipped=0,
                rejects=rejects,
                sha256=sha256,
            )
            if outcome.over(self.max_reject_ratio):
                outcome.failed = True
                return outcome
            async with _ticking(self.run, rows=scanner.rows, rejected=rejects.count):
                if self.mode == "insert":
                    insert_rows = insert_new(self.dataset, stage, self.columns)
                    outcome.inserted = (await conn.execute(insert_rows)).rowcount
                else:
                    outcome.inserted, outcome.updated = await upsert_staged(
                        conn, dataset=self.dataset, stage=stage, columns=self.columns
                    )
            outcome.skipped = valid - outcome.inserted - outcome.updated
            return outcome

    # reading the file into COPY

    def _scanner(self, *, now: datetime, fill_defaults: bool, keep_raw: bool = False) -> Scanner:
        """`fill_defaults`: an empty created_at becomes `now` (COPY into the table itself) rather
        than NULL (staged: the upsert then keeps a stored row's created_at)."""
        clean = None
        if FAST_PATH and cleanlines.supported(self.dataset.name, self.columns):
            nullable = frozenset() if fill_defaults else DEFAULT_NOW & set(self.columns)
            clean = cleanlines.CleanLines(self.dataset.name, self.columns, may_be_empty=nullable)
        return Scanner(
            columns=self.columns,
            check=self._check(now, fill_defaults),
            clean=clean,
            name=self.name,
            keep_raw=keep_raw,
        )

    def _check(self, now: datetime, fill_defaults: bool) -> RowCheck:
        dataset = self.dataset
        left_empty = [] if fill_defaults else [c for c in self.columns if c in DEFAULT_NOW]

        def check(row: dict[str, str]) -> dict[str, Any]:
            values = dataset.check_row(row, now=now)
            for column in left_empty:
                if not row[column].strip():
                    values[column] = None
            return values

        return check

    async def _copy(
        self,
        driver: asyncpg.Connection,
        *,
        table: str,
        scanner: Scanner,
        rejects: RejectLog,
        spill: RecordSpill | None = None,
    ) -> str:
        """Stream the file through `scanner` into COPY `table`; the SHA-256 of what was read."""

        async def progress() -> None:
            await self.run.progress(rows=scanner.rows, rejected=rejects.count)

        return await copy_input(
            driver,
            path=self.path,
            name=self.name,
            dataset=self.dataset,
            columns=self.columns,
            table=table,
            scanner=scanner,
            rejects=rejects,
            spill=spill,
            progress=progress,
        )

    # outcome

    def _reject_log(self) -> RejectLog:
        return RejectLog(import_id=self.import_id, dataset=self.dataset.name, file=self.name)


@contextlib.contextmanager
def _closed_on_error(rejects: RejectLog) -> Iterator[RejectLog]:
    """The log, closed if what uses it fails (on success the caller saves, then closes it)."""
    try:
        yield rejects
    except BaseException:
        rejects.close()
        raise


@contextlib.asynccontextmanager
async def _ticking(run: JobRun, **counters: int) -> AsyncIterator[None]:
    """Keep reporting progress while one long statement runs."""

    async def tick() -> None:
        while True:
            await run.progress(**counters)
            await asyncio.sleep(1.0)

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
