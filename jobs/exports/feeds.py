"""Incremental export feeds: a named cursor in `export_feeds`, read and advanced in the export.

An incremental export runs in one REPEATABLE READ transaction (not READ ONLY: it writes the
feed's row), in this order:

1. its first statement takes the snapshot and this export's cursor (`take_cursor`); then the
   feed is locked (`open_feed`) with a transaction-level advisory lock, so a second export of
   the same feed fails at once with FeedBusy instead of waiting, and no row lock gives the
   transaction an id for the length of the export;
2. the rows its snapshot sees that the feed's cursor does not are written under a temp name;
3. the feed's row is written (`advance_feed`): the new cursor, the count, the file. In the rare
   race where another export of the feed committed between this one's snapshot and its lock,
   this raises a serialization failure (retried) before anything is published;
4. the file and its manifest are renamed into place;
5. the transaction commits.

A failure before 5 rolls the cursor back and removes the files. A failure of the commit itself
(the connection lost at that moment) leaves the file in place and, if the server did not commit,
the cursor where it was: the next export repeats this one's rows. Rows may repeat; none is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.errors import PermanentError
from jobs.exports.xids import Changes, PgSnapshot, cursor_text, usable_cursor
from jobs.models import FeedExport
from jobs.schema import export_feeds

# Transaction ids checked with pg_xact_status() per export, at about a microsecond each; beyond
# this many (a transaction open for that long), later ids are treated as unseen: repeats.
SCAN_LIMIT = 2_000_000
_LOCK_NAMESPACE = "etl.export_feeds"


class FeedBusy(PermanentError):
    """Another export of this feed is running; enqueue this one again when it has finished."""


class FeedDatasetMismatch(PermanentError):
    """This feed follows another dataset; use another feed name."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """This export's snapshot, and the cursor to store for it (xids.cursor_text)."""

    snapshot: PgSnapshot
    cursor: str


# One statement, the transaction's first, so that it takes the snapshot and scans right away:
# the fewer transactions end between the snapshot and the statuses, the rarer cursor_text has to
# lower the cursor. The statuses of the listed transactions are read once the scan is done (the
# CASE ties them to its result), so a transaction that ended during the scan is caught.
_CURSOR_SQL = """
with snap as materialized (
    select s, pg_snapshot_xmin(s)::text::bigint as xmin, pg_snapshot_xmax(s)::text::bigint as xmax
    from pg_current_snapshot() as s
), scan as materialized (
    select least(snap.xmax, snap.xmin + cast(:scan_limit as bigint)) as scanned_to,
        array(
            select x from generate_series(
                snap.xmin + 1, least(snap.xmax, snap.xmin + cast(:scan_limit as bigint)) - 1
            ) as x
            where pg_xact_status(x::text::xid8) = 'in progress'
        ) as in_progress
    from snap
)
select snap.s::text as snapshot, scan.scanned_to, scan.in_progress,
    array(
        select p::text::bigint from pg_snapshot_xip(snap.s) as p
        where case when scan.in_progress is not null then pg_xact_status(p) end
            is distinct from 'in progress'
    ) as ended
from snap, scan
"""


async def take_cursor(conn: AsyncConnection) -> Cursor:
    """Take the transaction's snapshot (this must be its first statement) and its cursor."""
    row = (await conn.execute(text(_CURSOR_SQL), {"scan_limit": SCAN_LIMIT})).one()
    snap = PgSnapshot.parse(row.snapshot)
    cursor = cursor_text(
        snap,
        scanned_to=int(row.scanned_to),
        in_progress=[int(x) for x in row.in_progress],
        ended=[int(x) for x in row.ended],
    )
    return Cursor(snapshot=snap, cursor=cursor)


@dataclass(frozen=True, slots=True)
class FeedPosition:
    """Where an export of a feed starts and where the feed will be once it is published."""

    name: str
    dataset: str
    export: int
    """This export's number in the feed, 1 for the first."""
    after: str | None
    """The previous export's cursor; None when this export holds every row (the first)."""
    taken: Cursor

    @property
    def changes(self) -> Changes | None:
        return None if self.after is None else Changes(after=self.after)

    def result(self) -> FeedExport:
        return FeedExport(feed=self.name, export=self.export, complete=self.after is None)

    def manifest(self) -> dict[str, Any]:
        return {
            "feed": self.name,
            "export": self.export,
            "complete": self.after is None,
            "after": self.after,
            "snapshot": str(self.taken.snapshot),
            "cursor": self.taken.cursor,
        }


async def open_feed(
    conn: AsyncConnection, taken: Cursor, *, name: str, dataset: str
) -> FeedPosition:
    """Lock the feed for this transaction and read where its previous export ended."""
    locked = await conn.scalar(
        text("select pg_try_advisory_xact_lock(hashtext(:namespace), hashtext(:name))"),
        {"namespace": _LOCK_NAMESPACE, "name": name},
    )
    if not locked:
        raise FeedBusy(
            f"export feed {name!r} is being exported by another job; "
            "enqueue this export again when that one has finished"
        )
    columns = (export_feeds.c.dataset, export_feeds.c.cursor, export_feeds.c.exports)
    row = (await conn.execute(select(*columns).where(export_feeds.c.name == name))).one_or_none()
    if row is not None and row.dataset != dataset:
        raise FeedDatasetMismatch(
            f"export feed {name!r} follows dataset {row.dataset!r}, not {dataset!r}; "
            f"use another feed name for {dataset}"
        )
    after = None if row is None else row.cursor
    if after is not None and not usable_cursor(after, reference=taken.snapshot.xmax):
        after = None  # see usable_cursor: this export is complete, as a first one is
    return FeedPosition(
        name=name,
        dataset=dataset,
        export=(0 if row is None else row.exports) + 1,
        after=after,
        taken=taken,
    )


async def advance_feed(
    conn: AsyncConnection, position: FeedPosition, *, taken_at: datetime, file: str, job_id: str
) -> None:
    """Store this export's cursor; committed with the export's transaction, or not at all."""
    values = {
        "cursor": position.taken.cursor,
        "exports": position.export,
        "exported_at": taken_at,
        "file": file,
        "job_id": job_id,
    }
    statement = insert(export_feeds).values(name=position.name, dataset=position.dataset, **values)
    await conn.execute(statement.on_conflict_do_update(index_elements=["name"], set_=values))
