"""`python -m bench --quick` runs end to end against the test servers and writes sound results."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bench import sessions
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
    "growth",
}
RUN_KEYS = {"command", "date", "host", "cpus", "postgresql", "rows", "rounds"}
FAMILIES = ("import mode=insert", "import mode=upsert", "upsert_rows", "export csv",
            "export jsonl", "transfer_funds", "ping jobs", "enqueue ping jobs")  # fmt: skip
# At least one scenario per job family runs through a real worker.
VIA_WORKER = ("import mode=insert", "import mode=upsert", "upsert_rows", "export",
              "transfer_funds")  # fmt: skip

Row = dict[str, Any]
# The figures ("Performance, round 2"): every matching row's target is at least this.
FIGURES: list[tuple[str, Callable[[Row], bool], float]] = [
    ("realistic import vs psql of the cleaned file",
     lambda r: "realistic" in r["scenario"], 0.8),
    ("clean import vs psql \\copy",
     lambda r: r["scenario"].startswith("import mode=insert, empty table")
     and r["baseline"] == "psql \\copy", 1.0),
    ("import upsert, half present vs staged upsert",
     lambda r: r["scenario"].startswith("import mode=upsert, half the keys present"), 1.1),
    ("upsert_rows vs executemany",
     lambda r: r["scenario"].startswith("upsert_rows") and "executemany" in r["scenario"], 2.0),
    ("batches vs pgbench 1,000 per transaction",
     lambda r: r["scenario"].startswith("transfer_funds, batches of 1,000")
     and "1,000 per transaction" in r["baseline"], 1.5),
    ("batches vs per-transfer pgbench -c 8",
     lambda r: r["scenario"].startswith("transfer_funds, batches of 1,000")
     and r["baseline"].startswith("pgbench -c 8"), 10.0),
    ("single-transfer jobs vs per-transfer pgbench -c 8",
     lambda r: r["scenario"].startswith("transfer_funds, 1 per job"), 0.5),
    ("worker on no-op jobs vs bare arq",
     lambda r: r["scenario"].startswith("ping jobs"), 0.9),
    ("JSON Lines export vs psql's CSV",
     lambda r: r["scenario"].startswith("export jsonl") and "peak RSS" not in r["scenario"]
     and "with accounts" not in r["scenario"], 0.5),
    ("nested JSON Lines export (ORM objects, selectinload) vs psql of json_agg",
     lambda r: r["scenario"].startswith("export jsonl customers with accounts")
     and "peak RSS" not in r["scenario"], 0.25),
]  # fmt: skip


def _database_exists(server_url: str, name: str) -> bool:
    async def query() -> bool:
        conn = await asyncpg.connect(asyncpg_dsn(server_url))
        try:
            return bool(await conn.fetchval("select 1 from pg_database where datname = $1", name))
        finally:
            await conn.close()

    return asyncio.run(query())


def _bench(server_settings: Settings, *args: str, timeout: int) -> subprocess.CompletedProcess[str]:
    assert server_settings.database_url and server_settings.redis_url
    env = {
        **os.environ,
        "DATABASE_URL": server_settings.database_url,
        "REDIS_URL": server_settings.redis_url,
    }
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          check=False)  # fmt: skip


def _load(path: Path) -> tuple[dict[str, Any], list[Row]]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict) and set(data) == {"run", "rows"}
    assert RUN_KEYS <= set(data["run"]), data["run"]
    rows = data["rows"]
    assert isinstance(rows, list) and rows
    for row in rows:
        assert set(row) == KEYS, row
    errors = [f"{r['scenario']}: {r['note']}" for r in rows if "error:" in (r["note"] or "")]
    assert errors == []
    return data["run"], rows


def test_baselines_get_every_session_setting_the_jobs_set() -> None:
    assert sessions.uncovered() == []


def test_quick_run_measures_every_scenario(server_settings: Settings, tmp_path: Path) -> None:
    assert server_settings.database_url
    database = f"etl_bench_test_{uuid.uuid4().hex[:8]}"
    output = tmp_path / "quick.json"
    done = _bench(server_settings, "--quick", "--database", database, "--output", str(output),
                  timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| scenario | rows or jobs | seconds | rows/s |" in done.stdout

    run, rows = _load(output)
    assert run["postgresql"] and run["rows"] == 10_000
    for family in FAMILIES:
        assert any(r["scenario"].startswith(family) for r in rows), family
    for family in VIA_WORKER:
        assert any(
            r["scenario"].startswith(family) and "via worker" in r["scenario"] for r in rows
        ), family
    realistic = [r for r in rows if "realistic" in r["scenario"]]
    assert len(realistic) == 1 and realistic[0]["seconds"] is not None
    assert "cleaned" in realistic[0]["baseline"] and "work_mem" in realistic[0]["note"]
    assert any("1,000 per transaction" in (r["baseline"] or "") for r in rows)
    for what, matches, figure in FIGURES:
        found = [r for r in rows if matches(r)]
        assert found, what
        for row in found:
            assert row["target"] is not None and row["target"] >= figure, (what, row)

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
        "export jsonl customers with accounts (selectinload) peak RSS, 5xN vs N rows",
    ]
    assert all(r["ratio"] > 0 and r["target"] == 1.2 for r in growth)
    # The only row without numbers is pgloader's, which is not installed here.
    untimed = [r for r in rows if r["seconds"] is None and r not in growth]
    assert all(r["note"].startswith("skipped:") for r in untimed), untimed
    assert all(r["growth"] is None for r in rows)

    # The picture beside the JSON, and the README table made from the JSON.
    svg = (tmp_path / "quick.svg").read_text()
    assert svg.startswith("<svg") and "realistic" in svg and "1,000 per transaction" in svg
    table = _bench(server_settings, "--table", str(output), timeout=60)
    assert table.returncode == 0, table.stderr
    header, _, body = table.stdout.partition("\n\n")
    assert header.startswith("Measured with `python -m bench --quick")
    assert "PostgreSQL" in header and run["date"] in header
    assert body.count("\n| ") == len(rows)  # a line per row below the header and its rule

    assert not _database_exists(server_settings.database_url, database)


def test_quick_growth_run(server_settings: Settings, tmp_path: Path) -> None:
    output = tmp_path / "growth.json"
    done = _bench(server_settings, "--quick", "--growth", "2000,4000", "--database",
                  f"etl_bench_test_{uuid.uuid4().hex[:8]}", "--output", str(output),
                  timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]

    run, rows = _load(output)
    assert run["growth_sizes"] == [2000, 4000]
    assert all(r["growth"] is not None for r in rows)
    series = {r["growth"]["series"] for r in rows}
    assert len(series) == 4 and any("upsert" in s for s in series)
    assert {s for s in series if s.startswith("export")} == {"export csv", "export jsonl"}
    for name in series:
        rates = [r for r in rows if r["growth"] == {"series": name, "size": r["rows"],
                                                    "measure": "rate"}]  # fmt: skip
        assert [r["rows"] for r in rates] == [2000, 4000], name
        assert all(r["rate"] > 0 and r["peak_rss_mb"] > 0 and r["target"] >= 0.85 for r in rates)
        assert rates[0]["ratio"] == pytest.approx(1.0)
        [rss] = [r for r in rows if r["growth"]["series"] == name
                 and r["growth"]["measure"] == "peak_rss"]  # fmt: skip
        assert rss["ratio"] > 0 and rss["target"] == 1.15 and "a ceiling" in rss["note"]
    svg = (tmp_path / "growth.svg").read_text()
    assert "Growth" in svg and "peak RSS" in svg
