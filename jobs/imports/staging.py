"""The SQL that moves validated rows into a dataset's table, shared by import_file and upsert_rows.

Rows first land in a source with a `rec` column numbering them in input order (an import's temp
table, or upsert_rows' unnested arrays); one INSERT ... SELECT then writes them, so the database
does the work set-based:

- upsert: ON CONFLICT (key) DO UPDATE, rows deduplicated first (the last occurrence of a key wins;
  ON CONFLICT DO UPDATE fails if one statement touches a key twice). A row equal to the stored one
  is not written: its updated_at stays, and it counts as unchanged, not updated.
- upsert of a whole file: MERGE, same outcome (merge.py). With half the keys new, ON CONFLICT
  probes the key index for every row and locks every updated row first (a WAL record each); MERGE
  hash-joins the file to the table once (the README's Performance section has the numbers). MERGE
  has no RETURNING before PostgreSQL 17, so the counts come from the transaction's own statistics
  (pg_stat_xact_user_tables). Its source must hold one row per key (see merge.py for why).
- insert: ON CONFLICT (key) DO NOTHING, last occurrence first, so it is the one that lands.

An empty created_at means "now" for a new row but leaves a stored row's created_at alone, so
importing the same file twice leaves the same table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    FromClause,
    Identity,
    MetaData,
    Select,
    String,
    Table,
    TextClause,
    delete,
    exists,
    func,
    literal_column,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import Insert, distinct_on
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.dml import ReturningDelete

from jobs.registry import Dataset

# Columns whose empty value means "now" on insert and "keep what is stored" on update.
DEFAULT_NOW = frozenset({"created_at"})
STAGE_NAME = "import_stage"
_PLAIN = re.compile(r"[a-z_][a-z0-9_]*")


def staging_table(dataset: Dataset, columns: Sequence[str]) -> Table:
    """A temp table for the file's columns, typed like the target but without its constraints.

    Built column by column: `CREATE TEMP TABLE ... (LIKE target)` would copy NOT NULL and the
    identity column, and COPY of rows without `id` into it would fail.
    """
    return Table(
        STAGE_NAME,
        MetaData(),
        Column("rec", BigInteger, Identity(always=True), nullable=False),
        *(Column(name, dataset.table.c[name].type) for name in columns),
        prefixes=["TEMPORARY"],
        postgresql_on_commit="DROP",
    )


@dataclass(frozen=True, slots=True)
class Reference:
    """A column that must name an existing row elsewhere (accounts.customer_external_id)."""

    column: str
    table: Table
    target: str

    @property
    def reason(self) -> str:
        return f"{self.column}: no row in {self.table.name} has this {self.target}"


def references(dataset: Dataset, columns: Sequence[str]) -> list[Reference]:
    """The references among `columns` (the ones a file or a payload row carries)."""
    return [
        Reference(column=fk.parent.name, table=fk.column.table, target=fk.column.name)
        for fk in sorted(dataset.table.foreign_keys, key=lambda fk: fk.parent.name)
        if fk.parent.name in columns
    ]


def drop_unknown_references(stage: Table, ref: Reference) -> ReturningDelete[*tuple[Any, ...]]:
    """Remove staged rows naming no existing row; RETURNING their `rec`."""
    owner = ref.table.c[ref.target]
    return (
        delete(stage)
        .where(
            stage.c[ref.column].is_not(None),
            ~exists().where(owner == stage.c[ref.column]),
        )
        .returning(stage.c.rec)
    )


def count_without(stage: FromClause, column: str) -> Select[int, int]:
    """(rows, rows whose `column` is NULL) in the source."""
    return select(
        func.count(),
        func.count().filter(stage.c[column].is_(None)),
    ).select_from(stage)


def _key(dataset: Dataset, source: FromClause) -> ColumnElement[Any]:
    key = source.c[dataset.key]
    # Byte order sorts text keys fastest; any order groups equal keys together.
    return key.collate("C") if isinstance(dataset.table.c[dataset.key].type, String) else key


def _insert_columns(dataset: Dataset, staged: Sequence[str]) -> list[str]:
    return [
        c
        for c in dataset.input_columns
        if c in staged or (c in DEFAULT_NOW and c in dataset.table.c)
    ]


def _value(source: FromClause, column: str, staged: Sequence[str]) -> ColumnElement[Any]:
    if column in DEFAULT_NOW:
        return func.coalesce(source.c[column], func.now()) if column in staged else func.now()
    return source.c[column]


def upsert(
    dataset: Dataset,
    source: FromClause,
    staged: Sequence[str],
    *,
    given: bool | None,
    dedupe: bool = True,
) -> Select[int, int]:
    """INSERT ... ON CONFLICT DO UPDATE of the source's rows; selects (inserted, updated).

    `given`: None writes every row, with created_at updated only if the source has that column;
    True / False write only the rows whose created_at is given / empty (and update created_at
    only for the former): the two halves of a file where some rows have it and some do not.
    `dedupe`: False when the source holds each key once already.
    """
    table = dataset.table
    key = _key(dataset, source)
    columns = _insert_columns(dataset, staged)
    rows_in = select(source.c.rec, *(source.c[c] for c in staged))
    if dedupe:
        rows_in = rows_in.ext(distinct_on(key)).order_by(key, source.c.rec.desc())
    latest = rows_in.subquery("latest")
    rows = select(*(_value(latest, c, staged) for c in columns))
    default_now = [c for c in staged if c in DEFAULT_NOW]
    if given is not None:
        rows = rows.where(
            *(latest.c[c].is_not(None) if given else latest.c[c].is_(None) for c in default_now)
        )
    stmt = pg_insert(table).from_select(columns, rows)
    keep = {c for c in DEFAULT_NOW if c not in staged or given is False}
    updated = [c for c in columns if c != dataset.key and c not in keep]
    set_: dict[str, ColumnElement[Any]] = {c: stmt.excluded[c] for c in updated}
    set_["updated_at"] = func.now()
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c[dataset.key]],
        set_=set_,
        where=tuple_(*(table.c[c] for c in updated)).is_distinct_from(
            tuple_(*(stmt.excluded[c] for c in updated))
        ),
    )
    written = stmt.returning(literal_column("xmax = 0", Boolean).label("fresh")).cte("written")
    return select(
        func.count().filter(written.c.fresh),
        func.count().filter(~written.c.fresh),
    )


def _q(name: str) -> str:
    """A registry name as an SQL identifier (they are all plain; checked, not trusted)."""
    if not _PLAIN.fullmatch(name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return f'"{name}"'


def merge(
    dataset: Dataset, staged: Sequence[str], *, given: bool | None, dedupe: bool
) -> TextClause:
    """MERGE of the staged rows into the table; `given` as for upsert().

    `dedupe` keeps the last row of each key; without it the staged rows go in as they are, which
    is right only when no key repeats (merge.py checks that first).
    """
    key = _q(dataset.key)
    rows = _q(STAGE_NAME)
    if dedupe:
        text_key = isinstance(dataset.table.c[dataset.key].type, String)
        order = key + (' COLLATE "C"' if text_key else "")
        rows = f"(SELECT DISTINCT ON ({order}) * FROM {rows} ORDER BY {order}, rec DESC)"
    if given is not None:
        test = "IS NOT NULL" if given else "IS NULL"
        where = " AND ".join(f"{_q(c)} {test}" for c in staged if c in DEFAULT_NOW)
        rows = f"(SELECT * FROM {rows} AS latest WHERE {where})"
    columns = _insert_columns(dataset, staged)
    keep = {c for c in DEFAULT_NOW if c not in staged or given is False}
    updated = [c for c in columns if c != dataset.key and c not in keep]
    values = [
        f"s.{_q(c)}"
        if c not in DEFAULT_NOW
        else (f"coalesce(s.{_q(c)}, now())" if c in staged else "now()")
        for c in columns
    ]
    stored = ", ".join(f"t.{_q(c)}" for c in updated)
    incoming = ", ".join(f"s.{_q(c)}" for c in updated)
    sets = ", ".join([*(f"{_q(c)} = s.{_q(c)}" for c in updated), '"updated_at" = now()'])
    return text(
        f"MERGE INTO {_q(dataset.table.name)} AS t USING {rows} AS s ON t.{key} = s.{key}"
        f" WHEN MATCHED AND ({stored}) IS DISTINCT FROM ({incoming}) THEN UPDATE SET {sets}"
        f" WHEN NOT MATCHED THEN INSERT ({', '.join(_q(c) for c in columns)})"
        f" VALUES ({', '.join(values)})"
    )


def repeated_keys(dataset: Dataset) -> TextClause:
    """Whether any key occurs more than once among the staged rows."""
    key = _q(dataset.key)
    return text(
        f"SELECT EXISTS (SELECT 1 FROM {_q(STAGE_NAME)} GROUP BY {key} HAVING count(*) > 1)"
    )


def written_so_far(table: Table) -> Select[int, int]:
    """(rows inserted, rows updated) in `table` by this transaction so far: taken before and
    after a statement, the difference is what the statement wrote."""
    return (
        select(literal_column("n_tup_ins", BigInteger), literal_column("n_tup_upd", BigInteger))
        .select_from(text("pg_stat_xact_user_tables"))
        .where(literal_column("relid") == func.to_regclass(table.name))
    )


def insert_new(dataset: Dataset, source: FromClause, staged: Sequence[str]) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING, last occurrence first; rowcount: the rows inserted."""
    columns = _insert_columns(dataset, staged)
    rows = select(*(_value(source, c, staged) for c in columns)).order_by(source.c.rec.desc())
    return (
        pg_insert(dataset.table)
        .from_select(columns, rows)
        .on_conflict_do_nothing(index_elements=[dataset.table.c[dataset.key]])
    )
