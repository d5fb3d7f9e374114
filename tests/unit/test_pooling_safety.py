"""Job code keeps no session state: what pgbouncer in transaction mode would break is refused here.

Through pgbouncer in transaction mode (DB_POOL=null, DB_STATEMENT_CACHE=off), a client's next
transaction may run on another server connection, and its server connection serves other
clients in between. State that outlives a transaction would be lost, or would leak into another
worker's work. Jobs use the transaction-scoped forms instead. A snapshot exported by one
transaction (`pg_export_snapshot()`) and imported by another (`SET TRANSACTION SNAPSHOT`) is
transaction-scoped on both sides and works through pgbouncer: the parallel and JSON Lines export
tests run through one in CI.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SESSION_STATE = {
    "a session-level SET (use SET LOCAL)": re.compile(
        r"""["']\s*SET\s+(?!LOCAL\b|TRANSACTION\s+(?:ISOLATION|SNAPSHOT)\b|CONSTRAINTS\b)\w""",
        re.IGNORECASE,
    ),
    "set_config(..., false), a session-level setting (pass true)": re.compile(
        r"set_config\s*\([^)]*,\s*false\s*\)", re.IGNORECASE
    ),
    "a session-level advisory lock (use pg_advisory_xact_lock)": re.compile(
        r"pg_(?:try_)?advisory_lock(?:_shared)?\s*\(", re.IGNORECASE
    ),
    "LISTEN (a session waits for notifications)": re.compile(r"""["']\s*LISTEN\s""", re.I),
    "a named prepared statement": re.compile(r"""["']\s*PREPARE\s+\w+""", re.IGNORECASE),
    "a cursor WITH HOLD": re.compile(r"\bWITH\s+HOLD\b", re.IGNORECASE),
    "a temp table outliving its transaction (add ON COMMIT DROP)": re.compile(
        r"""["']\s*CREATE\s+(?:TEMP|TEMPORARY)\s+TABLE\b(?![^;"']*ON\s+COMMIT\s+DROP)"""
        r"""|prefixes=\[\s*["']TEMP(?:ORARY)?["']\s*\](?![^)]*postgresql_on_commit=["']DROP)""",
        re.IGNORECASE,
    ),
}


def offences(source: str) -> list[str]:
    return [what for what, pattern in SESSION_STATE.items() if pattern.search(source)]


def test_no_job_module_keeps_session_state() -> None:
    found = {
        str(path.relative_to(ROOT)): offences(path.read_text())
        for path in sorted((ROOT / "jobs").rglob("*.py"))
    }
    assert {path: what for path, what in found.items() if what} == {}


def test_the_check_sees_each_kind_of_session_state() -> None:
    assert offences("text(\"SET work_mem = '1GB'\")") == ["a session-level SET (use SET LOCAL)"]
    assert offences("text(\"SET LOCAL work_mem = '1GB'\")") == []
    assert offences("'select pg_advisory_lock(1)'") == [
        "a session-level advisory lock (use pg_advisory_xact_lock)"
    ]
    assert offences("'select pg_advisory_xact_lock(1)'") == []
    assert offences('"CREATE TEMP TABLE s (n int)"') == [
        "a temp table outliving its transaction (add ON COMMIT DROP)"
    ]
    assert offences('"CREATE TEMP TABLE s (n int) ON COMMIT DROP"') == []
    assert offences('Table("s", m, prefixes=["TEMPORARY"])') == [
        "a temp table outliving its transaction (add ON COMMIT DROP)"
    ]
    assert offences('Table("s", m, prefixes=["TEMPORARY"], postgresql_on_commit="DROP")') == []
    assert offences("\"select set_config('x.y', '1', false)\"") == [
        "set_config(..., false), a session-level setting (pass true)"
    ]
