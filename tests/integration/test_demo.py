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

from tests.integration.etl_process import cli_env, etl
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
    assert (customers["dataset"], customers["rows_read"], customers["rejected"]) == (
        "customers",
        305,
        5,
    )
    assert customers["inserted"] == 300
    reasons = [reject["reason"] for reject in customers["rejects"]]
    assert len(reasons) == 5
    for field in ("email:", "country:", "full_name:", "external_id:", "created_at:"):
        assert any(reason.startswith(field) for reason in reasons), (field, reasons)
    assert (accounts["rows_read"], accounts["inserted"], accounts["rejected"]) == (301, 300, 1)
    assert accounts["rejects"][0]["reason"].startswith("balance_cents: must be >= 0")

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

    # Again, in text: nothing new is loaded and no money moves twice.
    second = await etl("demo", env=env, cwd=tmp_path, within=240)
    assert second.code == 0, second.stdout + second.stderr[-4000:]
    out = second.stdout.splitlines()
    assert (
        "transfers: 0 applied, 0 rejected, 38 duplicate (already applied by an earlier run)" in out
    )
    assert any(
        line.startswith("import customers (demo-customers.csv): 305 rows read, 0 inserted")
        for line in out
    ), out
    assert any(line.startswith("export customers: 302 rows, ") for line in out), out
    assert out[-1].startswith("done in ")
    assert await _ledger(engine) == (balances, 30, 302)
