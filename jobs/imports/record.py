"""What an import records: its outcome, the run row in `import_runs`, the result it returns.

A retry of an import that did commit (the worker died before arq stored the result) finds the
run row and returns the recorded result instead of importing again, if it is the same import: the
same dataset, mode and file content. A job id reused for other work is refused
(IdempotencyConflict): returning the first import's result would say the second was done.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.errors import IdempotencyConflict, TooManyRejects
from jobs.imports.rejects import KEPT_WHEN_FAILED, RejectLog
from jobs.models import ImportResult
from jobs.schema import import_runs


def exceeds(rejected: int, rows: int, ratio: float) -> bool:
    """Whether `rejected` of `rows` is more than `ratio` allows, compared exactly.

    The ratio is read as the decimal it was written as (0.29 is 29/100, not the float just below
    it), so 29 rejects of 100 at 0.29 pass.
    """
    return Fraction(rejected) > Fraction(repr(ratio)) * rows


@dataclass(slots=True)
class Outcome:
    """One import's counts and rejects, before they are recorded."""

    import_id: uuid.UUID
    dataset: str
    file: str
    rows_read: int
    inserted: int
    updated: int
    skipped: int
    rejects: RejectLog
    sha256: str
    failed: bool = False

    def over(self, ratio: float) -> bool:
        """Refused: more rejects than `ratio` allows, or more than their spool can hold."""
        return self.rejects.full or exceeds(self.rejects.count, self.rows_read, ratio)

    def result(self) -> ImportResult:
        return ImportResult(
            import_id=self.import_id,
            dataset=self.dataset,
            rows_read=self.rows_read,
            inserted=self.inserted,
            updated=self.updated,
            skipped=self.skipped,
            rejected=self.rejects.count,
        )


def too_many(outcome: Outcome, *, limit: float) -> TooManyRejects:
    """The error of an import refused for its rejects: how many, the first reasons, where."""
    count, read = outcome.rejects.count, outcome.rows_read
    kept = min(count, KEPT_WHEN_FAILED)
    if outcome.rejects.full:
        return TooManyRejects(
            f"{outcome.file}: {count} rejects in the first {read} rows fill the "
            f"{outcome.rejects.cap} bytes kept for one import's rejects; nothing was loaded. "
            f"{outcome.rejects.reasons()}. The first {kept} are in import_rejects under "
            f"import_id {outcome.import_id}"
        )
    return TooManyRejects(
        f"{outcome.file}: {count} of {read} rows rejected ({count / read:.1%}), more than "
        f"max_reject_ratio={limit:g} allows; nothing was loaded. "
        f"{outcome.rejects.reasons()}. The first {kept} are in import_rejects under "
        f"import_id {outcome.import_id}"
    )


async def record(conn: AsyncConnection, outcome: Outcome, *, mode: str) -> None:
    """The run row, written in the import's own transaction."""
    await conn.execute(
        insert(import_runs).values(
            import_id=outcome.import_id,
            dataset=outcome.dataset,
            file=outcome.file,
            sha256=outcome.sha256,
            mode=mode,
            rows_read=outcome.rows_read,
            inserted=outcome.inserted,
            updated=outcome.updated,
            skipped=outcome.skipped,
            rejected=outcome.rejects.count,
        )
    )


@dataclass(frozen=True, slots=True)
class Recorded:
    """An import's run row: what it was, and the result it returned."""

    file: str
    dataset: str
    mode: str
    sha256: str
    finished_at: datetime
    result: ImportResult

    def same(self, *, dataset: str, mode: str, sha256: str) -> bool:
        return (self.dataset, self.mode, self.sha256) == (dataset, mode, sha256)

    def conflict(
        self, *, job_id: str, file: str, dataset: str, mode: str, sha256: str
    ) -> IdempotencyConflict:
        """The error of a job id used again for another import."""
        when = self.finished_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        first = _described(self.file, self.dataset, self.mode, self.sha256)
        now = _described(file, dataset, mode, sha256)
        return IdempotencyConflict(
            f"job id {job_id!r} was already used to import {first} on {when}; this run asks for "
            f"{now}; use a new job id"
        )


def _described(file: str, dataset: str, mode: str, sha256: str) -> str:
    return f"{file} (dataset {dataset}, mode {mode}, sha256 {sha256[:12]}\u2026)"


async def recorded(conn: AsyncConnection, import_id: uuid.UUID) -> Recorded | None:
    """The run row an earlier try of this import committed, if any."""
    query = select(import_runs).where(import_runs.c.import_id == import_id)
    row = (await conn.execute(query)).first()
    if row is None:
        return None
    return Recorded(
        file=row.file,
        dataset=row.dataset,
        mode=row.mode,
        sha256=row.sha256,
        finished_at=row.finished_at,
        result=ImportResult(
            import_id=row.import_id,
            dataset=row.dataset,
            rows_read=row.rows_read,
            inserted=row.inserted,
            updated=row.updated,
            skipped=row.skipped,
            rejected=row.rejected,
        ),
    )
