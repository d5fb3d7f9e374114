"""Database helpers jobs call: the raw asyncpg connection behind a SQLAlchemy one."""

from __future__ import annotations

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection


async def driver_connection(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under `conn`, inside `conn`'s transaction.

    SQLAlchemy's asyncpg adapter sends BEGIN lazily, with the first statement. A COPY sent through
    the raw connection before that would run in autocommit and could not be rolled back, so a
    statement runs first to make sure the transaction has begun.
    """
    await conn.execute(text("select 1"))
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert isinstance(driver, asyncpg.Connection)
    return driver
