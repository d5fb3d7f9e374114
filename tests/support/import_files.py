"""Writing import files and reading back what an import left, for the import tests."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.imports.job import import_file
from worker.runner import execute
from worker.settings import Settings

CUSTOMER_HEADER = b"external_id,email,full_name,country,created_at"
ACCOUNT_HEADER = b"id,customer_external_id,currency,balance_cents"


def write(settings: Settings, name: str, *lines: bytes, end: bytes = b"\n") -> Path:
    """A file in the import dir holding `lines`, each ended by `end`; gzipped if `name` ends .gz."""
    data = b"".join(line + end for line in lines)
    path = settings.import_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


def customer_line(i: int, **overrides: str) -> bytes:
    fields = {
        "external_id": f"c{i:06d}",
        "email": f"user{i}@example.com",
        "full_name": f"Customer {i}",
        "country": "GB",
        "created_at": "2020-01-01T00:00:00Z",
    }
    fields.update(overrides)
    return ",".join(fields.values()).encode()


async def run_import(ctx: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("dataset", "customers")
    result: dict[str, Any] = await execute(import_file, ctx, **kwargs)
    return result


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """From a connection of its own: what other sessions see."""
    async with engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]


async def count(engine: AsyncEngine, table: str) -> int:
    return int((await rows(engine, f"select count(*) from {table}"))[0][0])


async def rejects(engine: AsyncEngine) -> list[tuple[int, str, str]]:
    return [
        (int(r[0]), str(r[1]), str(r[2]))
        for r in await rows(
            engine, "select line_number, reason, raw_line from import_rejects order by line_number"
        )
    ]
