"""The engine's connections and the raw asyncpg connection helper."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.db import driver_connection


async def test_copy_through_the_driver_connection_rolls_back_with_the_transaction(
    engine: AsyncEngine, clean_db: None
) -> None:
    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with engine.begin() as conn:
            driver = await driver_connection(conn)
            await driver.copy_records_to_table(
                "accounts",
                records=[(1, "EUR", 100)],
                columns=["id", "currency", "balance_cents"],
            )
            assert (await conn.execute(text("select count(*) from accounts"))).scalar() == 1
            raise Abort
    async with engine.connect() as other:
        assert (await other.execute(text("select count(*) from accounts"))).scalar() == 0


async def test_statements_are_planned_for_their_parameters(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        mode = (await conn.execute(text("show plan_cache_mode"))).scalar()
    assert mode == "force_custom_plan"
