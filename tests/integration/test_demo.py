"""`etl demo` against the test database: it runs to the end, twice, and says what happened."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.etl_process import cli_env, etl
from worker.settings import Settings

pytestmark = pytest.mark.timeout(300)


def _file_facts(path: Path) -> tuple[str, list[str]]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), gzip.decompress(data).decode().splitlines()


async def _ledger(engine: AsyncEngine) -> tuple[int, int, int]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "select (select sum(balance_cents) from accounts),"
                    " (select count(*) from transfers where status = 'applied'),"
                    " (select count(*) from customers)"
                )
            )
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


async def test_demo_runs_to_the_end_and_again(
    settings: Settings, engine: AsyncEngine, tmp_path: Path, clean_db: None
) -> None:
    env = cli_env(settings, tmp_path)
    first = await etl("demo", "--json", env=env, cwd=tmp_path, within=240)
    assert first.code == 0, first.stdout + first.stderr[-4000:]
    summary: dict[str, Any] = json.loads(first.stdout)
    assert summary["queue"] == settings.queue_name
    assert "error" not in summary

    customers, accounts = summary["imports"]
    assert (customers["dataset"], customers["mode"]) == ("customers", "insert")
    assert (customers["rows_read"], customers["inserted"], customers["rejected"]) == (305, 300, 5)
    # The bad rows, by line number (the header is line 1), each with the rule it broke.
    assert [(r["line"], r["reason"].split(":")[0]) for r in customers["rejects"]] == [
        (8, "email"),
        (68, "country"),
        (128, "full_name"),
        (188, "external_id"),
        (248, "created_at"),
    ]
    assert (accounts["rows_read"], accounts["inserted"], accounts["rejected"]) == (301, 300, 1)
    assert accounts["rejects"] == [{"line": 302, "reason": "balance_cents: must be >= 0"}]

    assert summary["transfers"] == {
        "applied": 30,
        "rejected": 8,
        "duplicate": 0,
        "reasons": {"insufficient funds": 6, "to_account: unknown account": 2},
    }
    upsert = summary["upsert"]
    assert (upsert["inserted"], upsert["updated"], upsert["rejected"]) == (2, 3, 1)
    assert upsert["rejects"][0]["reason"] == "country: required"

    export = summary["export"]
    assert (export["dataset"], export["rows"], export["compressed"]) == ("customers", 302, True)
    path = Path(export["path"])
    assert path.is_relative_to(settings.export_dir)
    sha256, lines = _file_facts(path)
    assert sha256 == export["sha256"]
    assert len(lines) == 1 + 302  # header and rows
    balances, applied, customer_rows = await _ledger(engine)
    assert (applied, customer_rows) == (30, 302)

    # Again, in text: nothing new is loaded, no money moves twice, the same file comes out.
    second = await etl("demo", env=env, cwd=tmp_path, within=240)
    assert second.code == 0, second.stdout + second.stderr[-4000:]
    out = second.stdout.splitlines()
    assert (
        "import customers (demo-customers.csv): 305 rows read, 0 inserted, 300 already there, "
        "5 rejected"
    ) in out
    assert (
        "import accounts (demo-accounts.csv): 301 rows read, 0 inserted, 300 already there, "
        "1 rejected"
    ) in out
    assert (
        "transfers: 0 applied, 0 rejected, 38 duplicate "
        "(recorded by an earlier run: not applied again)"
    ) in out
    assert "upsert customers: 0 inserted, 0 updated, 1 rejected" in out
    assert "    rows[5]: country: required" in out
    assert f"    sha256 {export['sha256']}" in out
    assert out[-1].startswith("done in ")
    assert await _ledger(engine) == (balances, 30, 302)
