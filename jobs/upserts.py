"""`upsert_rows`: up to 10,000 rows from the payload, inserted or updated by their natural key.

Each row is checked by the dataset's rules (jobs.validation); a row that breaks one is reported
with its index and reason and not written. The valid rows go to the database in one statement:
the payload's columns as arrays, unnested, then the same INSERT ... ON CONFLICT (key) DO UPDATE an
import uses (imports/staging.py). Within the payload the last row for a key wins; a row equal to
the stored one is left alone (neither inserted nor updated). Everything is one transaction.

A row describes the whole record: a field it leaves out is stored as NULL (or, for created_at,
as now for a new row, while a stored row keeps its created_at).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, BigInteger, FromClause, bindparam, column, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.imports.staging import DEFAULT_NOW, Reference, references, upsert
from jobs.models import RowReject, UpsertResult, UpsertRowsPayload
from jobs.registry import Dataset, get_dataset
from jobs.spec import JobRun, etl_job
from jobs.validation import RowRejected


@etl_job(name="upsert_rows", payload=UpsertRowsPayload, result=UpsertResult, timeout_s=600)
async def upsert_rows(run: JobRun, payload: UpsertRowsPayload) -> UpsertResult:
    """Insert or update up to 10,000 rows; rows breaking a rule are reported, not written."""
    dataset = get_dataset(payload.dataset, writable=True)
    async with run.sessionmaker() as session, session.begin():
        conn = await session.connection()
        now: datetime = (await conn.execute(select(func.now()))).scalar_one()
        checked = _Checked(dataset)
        for index, row in enumerate(payload.rows):
            checked.add(index, row, now=now)
        for ref in references(dataset, dataset.input_columns):
            await checked.drop_unknown(conn, ref)
        inserted = updated = 0
        if checked.latest:
            inserted, updated = await _write(conn, dataset, checked)
    rejects = sorted(checked.rejects, key=lambda r: r.index)
    return UpsertResult(
        dataset=dataset.name,
        inserted=inserted,
        updated=updated,
        rejected=len(rejects),
        rejects=rejects,
    )


class _Checked:
    """The payload's rows after the rules: the last valid row per key, and the rejects."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.latest: dict[Any, tuple[int, dict[str, Any]]] = {}
        self.rejects: list[RowReject] = []
        self._allowed = frozenset(dataset.input_columns)
        self._default_now = [c for c in dataset.input_columns if c in DEFAULT_NOW]

    def add(self, index: int, row: Mapping[str, Any], *, now: datetime) -> None:
        if not self._allowed.issuperset(row):
            unknown = next(k for k in row if k not in self._allowed)
            allowed = ", ".join(self.dataset.input_columns)
            self.reject(
                index, f"{unknown[:64]!r}: unknown field; {self.dataset.name} rows take {allowed}"
            )
            return
        try:
            values = self.dataset.check_row(row, now=now)
        except RowRejected as exc:
            self.reject(index, str(exc))
            return
        for name in self._default_now:
            given = row.get(name)
            if not (isinstance(given, str) and given.strip()):
                values[name] = None  # not given: the statement decides (now, or keep)
        key = values[self.dataset.key]
        self.latest.pop(key, None)  # the last occurrence wins, in its own position
        self.latest[key] = (index, values)

    def reject(self, index: int, reason: str) -> None:
        self.rejects.append(RowReject(index=index, reason=reason))

    async def drop_unknown(self, conn: AsyncConnection, ref: Reference) -> None:
        """Reject rows naming no existing row; lock the ones named until commit.

        FOR KEY SHARE keeps a named customer from being deleted before this transaction commits,
        so the foreign key cannot fail at commit.
        """
        named = {v[ref.column] for _, v in self.latest.values() if v[ref.column] is not None}
        if not named:
            return
        target = ref.table.c[ref.target]
        found = set(
            (
                await conn.execute(
                    select(target)
                    .where(target.in_(sorted(named)))
                    .with_for_update(read=True, key_share=True)
                )
            ).scalars()
        )
        for key, (index, values) in list(self.latest.items()):
            if values[ref.column] is not None and values[ref.column] not in found:
                self.reject(index, ref.reason)
                del self.latest[key]


def _source(dataset: Dataset, checked: _Checked) -> FromClause:
    """The rows as one FROM item: unnest() of one array per column, `rec` numbering them."""
    names = ["rec", *dataset.input_columns]
    types = {"rec": BigInteger(), **{c: dataset.table.c[c].type for c in dataset.input_columns}}
    values: dict[str, list[Any]] = {name: [] for name in names}
    for index, row in checked.latest.values():
        values["rec"].append(index)
        for name in dataset.input_columns:
            values[name].append(row[name])
    # Typed binds: the asyncpg dialect renders them as $1::TEXT[] and so on.
    arrays = [bindparam(f"col_{name}", values[name], type_=ARRAY(types[name])) for name in names]
    return (
        func.unnest(*arrays)
        .table_valued(*(column(name, types[name]) for name in names))
        .render_derived(name="payload")
    )


async def _write(conn: AsyncConnection, dataset: Dataset, checked: _Checked) -> tuple[int, int]:
    source = _source(dataset, checked)
    halves: list[bool | None] = [None]
    for name in DEFAULT_NOW & set(dataset.input_columns):
        empty = sum(1 for _, v in checked.latest.values() if v[name] is None)
        if empty == len(checked.latest):
            halves = [False]
        elif empty:
            halves = [True, False]
    inserted = updated = 0
    for given in halves:
        new, changed = (
            # One row per key already (the last one): no need to have the database dedupe.
            await conn.execute(
                upsert(dataset, source, dataset.input_columns, given=given, dedupe=False)
            )
        ).one()
        inserted += new
        updated += changed
    return inserted, updated
