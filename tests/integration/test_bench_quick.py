"""`python -m bench --quick` runs end to end against the test servers and writes sound results."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from bench.database import asyncpg_dsn
from tests.support.database import ROOT
from worker.settings import Settings

KEYS = {
    "scenario",
    "rows",
    "seconds",
    "rate",
    "baseline",
    "baseline_rate",
    "ratio",
    "target",
    "peak_rss_mb",
    "note",
}
FAMILIES = ("import mode=insert", "import mode=upsert", "upsert_rows", "export csv",
            "export jsonl", "transfer_funds", "ping jobs", "enqueue ping jobs")  # fmt: skip


def _database_exists(server_url: str, name: str) -> bool:
    async def query() -> bool:
        conn = await asyncpg.connect(asyncpg_dsn(server_url))
        try:
            return bool(await conn.fetchval("select 1 from pg_database where datname = $1", name))
        finally:
            await conn.close()

    return asyncio.run(query())


def test_quick_run_measures_every_scenario(server_settings: Settings, tmp_path: Path) -> None:
    assert server_settings.database_url and server_settings.redis_url
    database = f"etl_bench_test_{uuid.uuid4().hex[:8]}"
    output = tmp_path / "quick.json"
    env = {
        **os.environ,
        "DATABASE_URL": server_settings.database_url,
        "REDIS_URL": server_settings.redis_url,
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--database", database, "--output", str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| scenario | rows or jobs | seconds | rows/s |" in done.stdout

    rows = json.loads(output.read_text())
    assert isinstance(rows, list) and rows
    for row in rows:
        assert set(row) == KEYS, row
    errors = [f"{r['scenario']}: {r['note']}" for r in rows if "error" in (r["note"] or "")]
    assert errors == []
    for family in FAMILIES:
        assert any(r["scenario"].startswith(family) for r in rows), family

    timed = [r for r in rows if r["seconds"] is not None]
    for row in timed:
        assert row["rows"] > 0 and row["seconds"] > 0, row
        assert row["rate"] > 0, row
        assert row["baseline_rate"] > 0, row
        # The JSON keeps four decimals of a ratio.
        expected = row["rate"] / row["baseline_rate"]
        assert row["ratio"] == pytest.approx(expected, rel=1e-3, abs=5e-5), row
    # Every export row carries the export process's peak RSS, and the growth rows compare them.
    for row in rows:
        if row["scenario"].startswith("export"):
            assert row["peak_rss_mb"] is not None and row["peak_rss_mb"] > 0, row
    growth = [r for r in rows if "peak RSS" in r["scenario"]]
    assert [r["scenario"] for r in growth] == [
        "export csv peak RSS, 5xN vs N rows",
        "export jsonl peak RSS, 5xN vs N rows",
    ]
    assert all(r["ratio"] > 0 and r["target"] == 1.2 for r in growth)
    # The only row without numbers is pgloader's, which is not installed here.
    untimed = [r for r in rows if r["seconds"] is None and r not in growth]
    assert all(r["note"].startswith("skipped:") for r in untimed), untimed

    assert not _database_exists(server_settings.database_url, database)
