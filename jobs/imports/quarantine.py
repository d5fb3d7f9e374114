"""Reading the quarantine: an import's rejected lines, a keyset page at a time, by line number.

`import_rejects` holds one row per rejected line of an import (a re-run deletes the import's rows
before writing its own), so the line number is a unique key within an import. Pages read the
index on (import_id, line_number) from the cursor on (`jobs/pages.py`); a late page of a large
import costs what the first one does (tests/integration/test_reject_pages.py).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Row, Select, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from jobs.pages import Page, keyset_page, keyset_statement
from jobs.schema import import_rejects

DEFAULT_PAGE = 100
MAX_PAGE = 1000
"""Lines in one page at most: a raw line keeps up to 4 KB, so a page stays under ~4 MB."""


class RejectedLine(BaseModel):
    """One quarantined line: where it was, why it was refused, and its text as read."""

    line_number: int
    reason: str
    raw_line: str
    dataset: str
    file: str
    created_at: datetime


def _rejects_of(import_id: uuid.UUID) -> Select[Any]:
    table = import_rejects.c
    return select(
        table.line_number, table.reason, table.raw_line, table.dataset, table.file, table.created_at
    ).where(table.import_id == import_id)


def rejects_statement(import_id: uuid.UUID, *, after: int | None, limit: int) -> Select[Any]:
    """The statement behind a page (for EXPLAIN in the tests)."""
    return keyset_statement(
        _rejects_of(import_id), key=import_rejects.c.line_number, after=after, limit=limit
    )


def _line(row: Row[Any]) -> RejectedLine:
    return RejectedLine.model_validate(dict(row._mapping))


def checked_import_id(import_id: uuid.UUID | str, *, after: int | None, limit: int) -> uuid.UUID:
    """The import id as a UUID; ValueError, naming the argument, for one that is not usable."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit: must be between 1 and {MAX_PAGE}, got {limit}")
    if after is not None and after < 0:
        raise ValueError(f"after: must be a line number (>= 0), got {after}")
    if isinstance(import_id, uuid.UUID):
        return import_id
    try:
        return uuid.UUID(import_id)
    except ValueError:
        raise ValueError(f"import id: not a UUID: {import_id!r}") from None


async def rejects_page(
    conn: AsyncSession | AsyncConnection, import_id: uuid.UUID, *, after: int | None, limit: int
) -> Page[RejectedLine, int]:
    """The import's rejected lines after line `after` (from the first without), `limit` of them."""
    checked_import_id(import_id, after=after, limit=limit)
    page = await keyset_page(
        conn, _rejects_of(import_id), key=import_rejects.c.line_number, after=after, limit=limit
    )
    return page.map(_line)
