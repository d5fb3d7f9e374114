"""What `etl migrate` says when a migration gives up on its lock or statement timeout."""

from __future__ import annotations

import pytest

from worker.migrate import MigrationTimeouts, blocked_migration

TIMEOUTS = MigrationTimeouts(lock_s=1.0, statement_s=60.0)


class FakeDatabaseError(Exception):
    def __init__(self, sqlstate: str, message: str, statement: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.statement = statement


def _raised_in_a_revision(exc: Exception) -> Exception:
    """`exc` as raised from a revision module's upgrade() (its globals name the revision)."""
    module = {"revision": "0007", "down_revision": "0006"}

    def upgrade() -> None:
        raise exc

    module["upgrade"] = upgrade  # type: ignore[assignment]
    exec("def call():\n    upgrade()\n", module)
    try:
        module["call"]()  # type: ignore[operator]
    except Exception as caught:
        return caught
    raise AssertionError("not raised")


LOCK = "canceling statement due to lock timeout"


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (
            "ALTER TABLE accounts ADD COLUMN note TEXT",
            "migration 0007 could not take a lock on accounts within 1 s (a long transaction "
            "holds it); nothing was changed (the database stays at revision 0006); "
            "retry when it ends",
        ),
        (
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_a_b ON accounts (b)",
            "migration 0007 could not take a lock on accounts within 1 s (a long transaction "
            "holds it); the database stays at revision 0006, its unfinished index ix_a_b left "
            "invalid and unused until the retry rebuilds it; retry when it ends",
        ),
        (
            "DROP INDEX CONCURRENTLY IF EXISTS ix_a_b",
            "migration 0007 could not take a lock on the table of index ix_a_b within 1 s (a "
            "long transaction holds it); the database stays at revision 0006; index ix_a_b may "
            "be left invalid (unused) until the retry drops it; retry when it ends",
        ),
    ],
)
def test_a_lock_timeout_names_the_revision_the_table_and_what_was_left(
    statement: str, expected: str
) -> None:
    exc = _raised_in_a_revision(FakeDatabaseError("55P03", LOCK, statement))
    blocked = blocked_migration(exc, TIMEOUTS)
    assert blocked is not None
    assert blocked.message == expected


def test_a_statement_timeout_says_which_setting_to_raise() -> None:
    exc = _raised_in_a_revision(
        FakeDatabaseError(
            "57014",
            "canceling statement due to statement timeout",
            "UPDATE customers SET email = lower(email)",
        )
    )
    blocked = blocked_migration(exc, TIMEOUTS)
    assert blocked is not None
    assert blocked.message == (
        "migration 0007 did not finish within 60 s (ETL_MIGRATION_STATEMENT_TIMEOUT) on "
        "customers; nothing was changed (the database stays at revision 0006); retry when the "
        "database is quieter, or raise ETL_MIGRATION_STATEMENT_TIMEOUT for a large table"
    )


@pytest.mark.parametrize(
    ("sqlstate", "message"),
    [
        ("57014", "canceling statement due to user request"),
        ("42P07", 'relation "accounts" already exists'),
    ],
)
def test_other_failures_are_left_as_they_are(sqlstate: str, message: str) -> None:
    exc = _raised_in_a_revision(FakeDatabaseError(sqlstate, message, "CREATE TABLE accounts ()"))
    assert blocked_migration(exc, TIMEOUTS) is None
