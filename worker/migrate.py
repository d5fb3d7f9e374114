"""`etl migrate`: Alembic's upgrade to head, run in-process, without stopping the service.

Migrations run while workers run, so every migration's connection carries two limits, set for
the whole session from its first statement (alembic/env.py, `MigrationTimeouts`):

- `lock_timeout` (ETL_MIGRATION_LOCK_TIMEOUT, 5 s). A migration that needs a lock held by a long
  transaction (an import in progress) gives up instead of waiting: while its lock request waits,
  every worker's statement on that table queues behind it, which stops the service as surely as
  the lock itself. CREATE (and DROP) INDEX CONCURRENTLY take only a lock writers do not
  conflict with, but then wait for the transactions writing the table, and for every older
  snapshot, to end. PostgreSQL waits on their transaction ids as locks, so this limit ends those
  waits too (PostgreSQL 15: tests/integration/test_online_migrations.py). Such a build, given
  up, leaves its index INVALID: unused by queries, removed and rebuilt by the retry.
- `statement_timeout` (ETL_MIGRATION_STATEMENT_TIMEOUT, 60 s) bounds any one statement, an index
  build included: raise it to build an index on a large table.

Each revision runs in its own transaction: a revision that fails leaves the earlier ones
applied and its own not, and `etl migrate` says in one line which revision, on which table, and
to retry (`MigrationBlocked`, exit 1). The workers' statements never queue behind a
migration's lock request for longer than the lock timeout.

Migrations need a direct connection to PostgreSQL. Through pgbouncer in transaction mode, a
session `SET` would hold only until the transaction ends, then stay on a server connection that
the workers get next. So the limits travel as startup parameters, which the server applies to
the whole session and pgbouncer refuses (`etl migrate` then says to connect directly); a pooler
that drops them silently is caught by `check_timeouts`.

Writing a revision that does not stop the service: expand, backfill in batches, contract.

1. Expand. Add what the new code needs beside what the running code uses: a new table; a
   nullable column, without a default or with a constant one (a catalogue change only, whatever
   the table's size); an index with `create_index_concurrently` (writes go on while it builds).
   Never rewrite a table (a column type change, a volatile default) or hold a lock for a scan.
2. Backfill in batches. Fill the new column in short transactions of a few thousand rows each
   (`UPDATE t SET new = ... WHERE id IN (SELECT id FROM t WHERE new IS NULL LIMIT 5000)`,
   repeated, each inside `op.get_context().autocommit_block()`, until it updates nothing), never
   one UPDATE of the whole table: it would hold every row it touched until it committed, and
   block the jobs writing them. A backfill of millions of rows belongs in a job, not the release.
3. Contract. Once every running worker uses the new shape, drop what it replaced
   (`drop_index_concurrently`, a column no code reads) and tighten: `NOT NULL` through a
   `CHECK (col IS NOT NULL) NOT VALID` constraint, then `VALIDATE CONSTRAINT` (it scans without
   blocking writes), then `SET NOT NULL` (PostgreSQL skips the scan given the valid check), then
   drop the check.

Revision 0004 (the index on import_rejects (import_id, line_number)) is an expand and a contract
in one: the new index serves every query the old one did, so the old one goes in the same
revision, once the new one is valid.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from alembic import command, op
from jobs.errors import ConfigError, EtlError, sqlstate_of
from worker.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parent.parent
LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"
PROTOCOL_VIOLATION = "08P01"


class MigrationBlocked(EtlError):
    """A migration could not finish within its time limits; retry when the database is quieter."""


@dataclass(frozen=True, slots=True)
class MigrationTimeouts:
    lock_s: float
    statement_s: float

    @classmethod
    def of(cls, settings: Settings) -> MigrationTimeouts:
        return cls(settings.migration_lock_timeout_s, settings.migration_statement_timeout_s)

    def server_settings(self) -> dict[str, str]:
        """The limits as session settings, in milliseconds (at least 1: 0 means no limit)."""
        return {
            "lock_timeout": str(max(1, round(self.lock_s * 1000))),
            "statement_timeout": str(max(1, round(self.statement_s * 1000))),
        }


def check_timeouts(connection: Connection, timeouts: MigrationTimeouts) -> None:
    """ConfigError unless the session runs with the migration's limits (a pooler may drop them)."""
    wanted = timeouts.server_settings()
    query = "SELECT name, setting FROM pg_settings WHERE name = ANY(:names)"
    found = {
        str(name): str(setting)
        for name, setting in connection.execute(text(query), {"names": list(wanted)})
    }
    connection.commit()
    if found != wanted:
        raise ConfigError(
            f"migrations need a direct connection to PostgreSQL: their session settings {wanted} "
            f"did not reach the server (it has {found}); point DATABASE_URL at PostgreSQL "
            "itself, not a connection pooler, to migrate"
        )


def create_index_concurrently(name: str, table: str, columns: Sequence[str]) -> None:
    """Build an index while writes go on: CREATE INDEX CONCURRENTLY, outside the transaction.

    A build that failed before (a lock or statement timeout, a killed deploy) leaves an INVALID
    index under its name, which IF NOT EXISTS would keep: it is dropped first, and rebuilt.
    """
    with op.get_context().autocommit_block():
        bind = op.get_bind()
        valid = bind.execute(
            text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"),
            {"name": name},
        ).scalar()
        if valid is False:
            op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
        op.create_index(
            name, table, list(columns), postgresql_concurrently=True, if_not_exists=True
        )


def drop_index_concurrently(name: str, table: str) -> None:
    """Drop an index without blocking the table's readers and writers."""
    with op.get_context().autocommit_block():
        op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)


def alembic_config(database_url: str, *, timeouts: MigrationTimeouts | None = None) -> Config:
    ini = ROOT / "alembic.ini"
    if not ini.exists():
        raise ConfigError(f"no alembic.ini in {ROOT}: run etl from the project's checkout")
    config = Config(str(ini))
    # alembic/env.py takes these from here rather than reading the settings a second time.
    config.attributes["database_url"] = database_url
    config.attributes["timeouts"] = timeouts
    return config


def upgrade_to_head(database_url: str, settings: Settings | None = None) -> str:
    """Upgrade the database to the newest revision and return that revision.

    MigrationBlocked, in one line, when a revision could not take a lock or finish in time.
    Runs its own event loop (alembic/env.py calls asyncio.run), so call it outside one.
    """
    timeouts = MigrationTimeouts.of(settings or get_settings())
    config = alembic_config(database_url, timeouts=timeouts)
    try:
        command.upgrade(config, "head")
    except Exception as exc:
        if sqlstate_of(exc) == PROTOCOL_VIOLATION and "startup parameter" in str(exc):
            raise ConfigError(
                "migrations need a direct connection to PostgreSQL: the server at DATABASE_URL "
                "refused their session settings (lock_timeout, statement_timeout), as pgbouncer "
                "does; point DATABASE_URL at PostgreSQL itself to migrate"
            ) from None
        blocked = blocked_migration(exc, timeouts)
        if blocked is None:
            raise
        raise blocked from None
    head = ScriptDirectory.from_config(config).get_current_head()
    return head or "base"


def blocked_migration(exc: BaseException, timeouts: MigrationTimeouts) -> MigrationBlocked | None:
    """What to tell the operator when `exc` is a migration giving up on its time limits."""
    code = sqlstate_of(exc)
    timed_out = code == QUERY_CANCELED and "statement timeout" in str(exc)
    if code != LOCK_NOT_AVAILABLE and not timed_out:
        return None
    revision, down = _failing_revision(exc)
    statement = str(getattr(exc, "statement", "") or "")
    target, state = _target(statement), _left_behind(statement, down)
    if timed_out:
        return MigrationBlocked(
            f"migration {revision} did not finish within {timeouts.statement_s:g} s "
            f"(ETL_MIGRATION_STATEMENT_TIMEOUT) on {target}; {state}; retry when the database "
            "is quieter, or raise ETL_MIGRATION_STATEMENT_TIMEOUT for a large table"
        )
    return MigrationBlocked(
        f"migration {revision} could not take a lock on {target} within {timeouts.lock_s:g} s "
        f"(a long transaction holds it); {state}; retry when it ends"
    )


def _failing_revision(exc: BaseException) -> tuple[str, str]:
    """The revision whose upgrade() raised, and the one before it, from the traceback's frames."""
    found = ("?", "?")
    tb = exc.__traceback__
    while tb is not None:
        module: dict[str, Any] = tb.tb_frame.f_globals
        if {"revision", "down_revision", "upgrade"} <= module.keys():
            down = module["down_revision"]
            before = ", ".join(down) if isinstance(down, tuple | list) else str(down or "base")
            found = (str(module["revision"]), before)
        tb = tb.tb_next
    return found


_ON_TABLE = re.compile(
    r"\b(?:ON(?:\s+ONLY)?|TABLE(?:\s+IF\s+(?:NOT\s+)?EXISTS)?(?:\s+ONLY)?|UPDATE|INTO|FROM)"
    r"\s+(\"?[\w.]+\"?)",
    re.IGNORECASE,
)
_INDEX = re.compile(
    r"\bINDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+(?:NOT\s+)?EXISTS\s+)?(\"?[\w.]+\"?)", re.IGNORECASE
)
_CONCURRENT = re.compile(r"^\s*(CREATE|DROP)\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY", re.IGNORECASE)


def _target(statement: str) -> str:
    if statement.lstrip().upper().startswith("DROP INDEX") and (index := _INDEX.search(statement)):
        return f"the table of index {index.group(1)}"
    table = _ON_TABLE.search(statement)
    return table.group(1) if table else "its tables"


def _left_behind(statement: str, down: str) -> str:
    """What the failed statement left: nothing, or an invalid index the retry deals with."""
    concurrent, index = _CONCURRENT.search(statement), _INDEX.search(statement)
    if concurrent is None or index is None:
        return f"nothing was changed (the database stays at revision {down})"
    if concurrent.group(1).upper() == "CREATE":
        return (
            f"the database stays at revision {down}, its unfinished index {index.group(1)} left "
            "invalid and unused until the retry rebuilds it"
        )
    return (
        f"the database stays at revision {down}; index {index.group(1)} may be left invalid "
        "(unused) until the retry drops it"
    )
