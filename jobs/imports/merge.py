"""Upserting a file's staged rows into its table: MERGE, one row per key, counted.

The source is first reduced to one row per key, the last occurrence in the file: MERGE judges
`WHEN MATCHED AND (stored) IS DISTINCT FROM (incoming)` against the row as it was before the
statement, so with a key repeated, a later line setting a value back to the stored one would be
skipped, the earlier line would win, and no error would say so. Finding out whether any key repeats
is one hash aggregate; the sort that removes repeats is paid only when some do.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Table, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.errors import TransientError, sqlstate_of
from jobs.imports.staging import (
    DEFAULT_NOW,
    count_without,
    merge,
    repeated_keys,
    upsert,
    written_so_far,
)
from jobs.registry import Dataset


async def upsert_staged(
    conn: AsyncConnection, *, dataset: Dataset, stage: Table, columns: Sequence[str]
) -> tuple[int, int]:
    """Upsert the staged rows, the last one per key; (inserted, updated).

    Rows with and without created_at go separately when both occur (an empty one keeps the stored
    value). A row equal to the stored one is not written and counted in neither.
    """
    halves: list[bool | None] = [None]
    for column in DEFAULT_NOW & set(columns):
        total, empty = (await conn.execute(count_without(stage, column))).one()
        if empty == total:
            halves = [False]
        elif empty:
            halves = [True, False]
    # Two halves must be deduplicated: a key in both would be written twice, the second winning.
    dedupe = len(halves) > 1 or bool((await conn.execute(repeated_keys(dataset))).scalar())
    tracked = await _counts_tracked(conn)
    inserted = updated = 0
    for given in halves:
        if tracked:
            new, changed = await _merge(conn, dataset, columns, given=given, dedupe=dedupe)
        else:  # no statistics to count MERGE's rows with: ON CONFLICT ... RETURNING counts
            upserted = upsert(dataset, stage, columns, given=given, dedupe=True)
            new, changed = (await conn.execute(upserted)).one()
        inserted += new
        updated += changed
    return inserted, updated


async def _merge(
    conn: AsyncConnection,
    dataset: Dataset,
    columns: Sequence[str],
    *,
    given: bool | None,
    dedupe: bool,
) -> tuple[int, int]:
    """One MERGE; its (inserted, updated) from the transaction's statistics before and after.

    A new key that another session inserted (and committed) meanwhile fails MERGE's insert with
    23505; run again, the statement's fresh snapshot sees that row and updates it instead.
    """
    written = written_so_far(dataset.table)
    statement = merge(dataset, columns, given=given, dedupe=dedupe)
    for attempt in (1, 2):
        before = (await conn.execute(written)).one()
        savepoint = await conn.begin_nested()
        try:
            await conn.execute(statement)
        except IntegrityError as exc:
            await savepoint.rollback()
            if sqlstate_of(exc) != "23505":
                raise
            if attempt == 2:
                raise TransientError(
                    f"another session inserted some of the same {dataset.name} keys "
                    "meanwhile; retrying"
                ) from exc
            continue
        await savepoint.commit()
        after = (await conn.execute(written)).one()
        return after[0] - before[0], after[1] - before[1]
    raise AssertionError("unreachable")


async def _counts_tracked(conn: AsyncConnection) -> bool:
    """Whether the server keeps the statistics MERGE's row counts are read from (it does unless
    track_counts was turned off, which also stops autovacuum)."""
    return (await conn.execute(text("SELECT current_setting('track_counts')"))).scalar() == "on"
