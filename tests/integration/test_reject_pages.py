"""Keyset pages of an import's rejects: the client, `etl rejects`, and the plan of a late page."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.imports.quarantine import rejects_statement
from tests.support.etl_process import cli_env, etl
from worker.client import EtlClient
from worker.errors import BadArgument
from worker.settings import Settings

INDEX = "ix_import_rejects_import_id_line_number"
IMPORT = uuid.UUID("00000000-0000-4000-8000-000000000001")
OTHER = uuid.UUID("00000000-0000-4000-8000-000000000002")


async def insert_rejects(engine: AsyncEngine, import_id: uuid.UUID, lines: int) -> None:
    """Rejects of lines 2 .. lines + 1 (line 1 is the header), as an import writes them."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "insert into import_rejects"
                " (import_id, dataset, file, line_number, reason, raw_line)"
                " select :id, 'customers', 'big.csv', n, 'email: not an e-mail address',"
                " 'c' || n || ',x,Name,GB' from generate_series(2, :last) as n"
            ),
            {"id": import_id, "last": lines + 1},
        )


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _nodes(child))]


async def test_a_late_page_starts_at_its_line_in_the_index(
    engine: AsyncEngine, clean_db: None
) -> None:
    await insert_rejects(engine, IMPORT, 200_000)
    await insert_rejects(engine, OTHER, 1_000)
    statement = rejects_statement(IMPORT, after=190_000, limit=100)
    sql = statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    async with engine.begin() as conn:
        await conn.execute(text("analyze import_rejects"))
        raw = (
            await conn.execute(text(f"explain (analyze, timing off, format json) {sql}"))
        ).scalar_one()
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    [scan] = [node for node in _nodes(plan) if node.get("Relation Name") == "import_rejects"]
    assert scan["Node Type"] in {"Index Scan", "Index Only Scan"}, plan
    assert scan["Index Name"] == INDEX
    assert "line_number > 190000" in scan["Index Cond"]
    # It read the page and the one row telling that another page follows, nothing before them.
    assert scan["Actual Rows"] == 101
    assert "Sort" not in {node["Node Type"] for node in _nodes(plan)}


async def test_pages_follow_the_cursor_to_the_end_without_gaps_or_repeats(
    settings: Settings, engine: AsyncEngine, clean_db: None
) -> None:
    await insert_rejects(engine, IMPORT, 250)
    await insert_rejects(engine, OTHER, 30)
    seen: list[int] = []
    cursors: list[int | None] = []
    async with EtlClient(settings) as client:
        after = None
        while True:
            page = await client.rejects(str(IMPORT), after=after, limit=100)
            seen += [row.line_number for row in page.rows]
            cursors.append(page.next_after)
            if page.next_after is None:
                break
            after = page.next_after
        first = (await client.rejects(IMPORT, limit=1)).rows[0]
    assert seen == list(range(2, 252))
    assert cursors == [101, 201, None]
    assert (first.line_number, first.reason, first.raw_line, first.file) == (
        2,
        "email: not an e-mail address",
        "c2,x,Name,GB",
        "big.csv",
    )


async def test_a_page_ending_exactly_at_the_last_line_says_it_is_the_last(
    settings: Settings, engine: AsyncEngine, clean_db: None
) -> None:
    await insert_rejects(engine, IMPORT, 100)
    async with EtlClient(settings) as client:
        page = await client.rejects(IMPORT, limit=100)
        empty = await client.rejects(OTHER)
    assert (len(page.rows), page.next_after) == (100, None)
    assert (list(empty.rows), empty.next_after) == ([], None)


@pytest.mark.parametrize(
    ("import_id", "after", "limit", "message"),
    [
        ("not-a-uuid", None, 10, "import id: not a UUID: 'not-a-uuid'"),
        (str(IMPORT), None, 0, "limit: must be between 1 and 1000, got 0"),
        (str(IMPORT), None, 1001, "limit: must be between 1 and 1000, got 1001"),
        (str(IMPORT), -1, 10, "after: must be a line number (>= 0), got -1"),
    ],
)
async def test_bad_page_arguments_are_refused_before_any_query(
    settings: Settings, import_id: str, after: int | None, limit: int, message: str
) -> None:
    client = EtlClient(settings.model_copy(update={"database_url": None}))
    with pytest.raises(BadArgument) as caught:
        await client.rejects(import_id, after=after, limit=limit)
    assert caught.value.message == message
    await client.close()


async def test_etl_rejects_prints_the_page_then_the_next_command(
    settings: Settings, engine: AsyncEngine, tmp_path: Path, clean_db: None
) -> None:
    await insert_rejects(engine, IMPORT, 5)
    env = cli_env(settings, tmp_path)
    first = await etl("rejects", str(IMPORT), "--limit", "2", env=env, cwd=tmp_path)
    assert first.code == 0, first.stderr
    assert first.stdout.splitlines() == [
        "line 2: email: not an e-mail address",
        "    c2,x,Name,GB",
        "line 3: email: not an e-mail address",
        "    c3,x,Name,GB",
        f"next: etl rejects {IMPORT} --after 3 --limit 2",
    ]
    last = await etl("rejects", str(IMPORT), "--after", "3", env=env, cwd=tmp_path)
    assert last.code == 0, last.stderr
    assert last.stdout.splitlines()[-1] == "end"
    assert [line for line in last.stdout.splitlines() if line.startswith("line ")] == [
        "line 4: email: not an e-mail address",
        "line 5: email: not an e-mail address",
        "line 6: email: not an e-mail address",
    ]
    as_json = await etl(
        "rejects", str(IMPORT), "--after", "4", "--limit", "1", "--json", env=env, cwd=tmp_path
    )
    document = json.loads(as_json.stdout)
    assert (document["next_after"], [row["line_number"] for row in document["rows"]]) == (5, [5])
    refused = await etl("rejects", "nope", env=env, cwd=tmp_path)
    assert (refused.code, refused.stderr.strip()) == (2, "etl: import id: not a UUID: 'nope'")
