"""What an import records: its outcome, the run row in `import_runs`, the result it returns.

A retry of an import that did commit (the worker died before arq stored the result) finds the
run row and returns the recorded result instead of importing again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from fractions import Fraction

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.errors import TooManyRejects
from jobs.imports.rejects import KEPT_WHEN_FAILED, RejectLog
from jobs.models import ImportResult
from jobs.tables import import_runs


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
        return exceeds(self.rejects.count, self.rows_read, ratio)

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


async def recorded_result(conn: AsyncConnection, import_id: uuid.UUID) -> ImportResult | None:
    """The result an earlier try of this import committed, if any."""
    query = select(import_runs).where(import_runs.c.import_id == import_id)
    row = (await conn.execute(query)).first()
    if row is None:
        return None
    return ImportResult(
        import_id=row.import_id,
        dataset=row.dataset,
        rows_read=row.rows_read,
        inserted=row.inserted,
        updated=row.updated,
        skipped=row.skipped,
        rejected=row.rejected,
    )
