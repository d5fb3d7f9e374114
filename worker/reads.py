"""What the client reads from PostgreSQL: keyset pages of an import's rejects, and later listings.

`EtlClient` takes these methods from `DatabaseReads`. The engine behind them is made on the first
read (an app that only enqueues never connects to PostgreSQL) from the client's settings, pool
choice included (DB_POOL, DB_STATEMENT_CACHE), and disposed of when the client closes.
"""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from jobs.imports.quarantine import DEFAULT_PAGE, RejectedLine, checked_import_id, rejects_page
from jobs.pages import Page
from worker import embedded
from worker.db import create_engine, create_sessionmaker
from worker.errors import BadArgument
from worker.settings import Settings


class DatabaseReads:
    """Reads of PostgreSQL, on an engine made on first use. With no DATABASE_URL, the embedded
    PostgreSQL under ETL_STATE_DIR is found (or started)."""

    settings: Settings
    _engine: AsyncEngine | None = None
    _sessions: async_sessionmaker[AsyncSession] | None = None

    async def _sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        if self._sessions is None:
            settings = self.settings
            if settings.database_url is None:
                settings = await asyncio.to_thread(embedded.resolve, settings)
            self._engine = create_engine(settings)
            self._sessions = create_sessionmaker(self._engine)
        return self._sessions

    async def close_database(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
        self._engine = self._sessions = None

    async def rejects(
        self, import_id: uuid.UUID | str, *, after: int | None = None, limit: int = DEFAULT_PAGE
    ) -> Page[RejectedLine, int]:
        """An import's rejected lines by line number, `limit` at a time (keyset pages).

        Pass the page's `next_after` as `after` for the next page; it is None on the last page.
        BadArgument for an import id that is not a UUID or a limit outside 1..1000.
        """
        try:
            wanted = checked_import_id(import_id, after=after, limit=limit)
        except ValueError as exc:
            raise BadArgument(str(exc)) from None
        sessions = await self._sessionmaker()
        async with sessions() as session, session.begin():
            return await rejects_page(session, wanted, after=after, limit=limit)
