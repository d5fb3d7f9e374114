"""Keyset pages: a listing read a page at a time by its key, never by OFFSET.

A page is `WHERE <filter> AND key > :after ORDER BY key LIMIT :n`. With an index leading with the
filter's columns and ending with the key, PostgreSQL starts reading at `after` and stops after
`n` rows however deep the page is; `OFFSET k` would read and throw away the k rows before it.
The cursor is the last key of the page, so rows inserted or deleted meanwhile never shift a
page, and nothing is read twice or skipped.

The key must be unique among the rows the query selects (a line number within one import, an id),
or rows sharing a key across a page boundary would be skipped. One row more than asked for is
read to tell whether another page follows, so the last page says so and no empty page is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Row, Select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

T = TypeVar("T")
U = TypeVar("U")
K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class Page(Generic[T, K]):
    """Rows in key order, and the key to ask for the next page with."""

    rows: Sequence[T]
    next_after: K | None
    """The last key of this page when another page follows; None when this page is the last."""

    def map(self, convert: Callable[[T], U]) -> Page[U, K]:
        return Page(rows=[convert(row) for row in self.rows], next_after=self.next_after)


def keyset_statement(
    query: Select[Any],
    *,
    key: ColumnElement[K],
    after: K | None,
    limit: int,
    descending: bool = False,
) -> Select[Any]:
    """`query` restricted to the keys after `after`, in key order, `limit` rows and one more."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if after is not None:
        query = query.where(key < after if descending else key > after)
    return query.order_by(key.desc() if descending else key.asc()).limit(limit + 1)


async def keyset_page(
    conn: AsyncSession | AsyncConnection,
    query: Select[Any],
    *,
    key: ColumnElement[K],
    after: K | None,
    limit: int,
    descending: bool = False,
) -> Page[Row[Any], K]:
    """One page of `query` by `key` (which `query` must select), after the key `after`."""
    statement = keyset_statement(query, key=key, after=after, limit=limit, descending=descending)
    rows = list((await conn.execute(statement)).all())
    if len(rows) <= limit:
        return Page(rows=rows, next_after=None)
    rows = rows[:limit]
    last: K = rows[-1]._mapping[key]
    return Page(rows=rows, next_after=last)
