"""The transfers' statements and their I/O: lock accounts, read the ledger, write set-based.

Every writer of balances (a batch, a group of jobs, one transfer of the fallback) goes through
these: accounts locked in ascending id order, ledger rows inserted in id order, so that writers
sharing accounts or ids wait for each other instead of deadlocking.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.models import TransferItem
from jobs.transfers.plan import AccountRow, GroupLedgerRow, LedgerRow, RecordedTransfer

# Lists of numbers and ids travel as comma-separated text, split and cast by PostgreSQL: asyncpg
# encodes an array parameter element by element in Python (12,000 elements for a batch of 1,000
# transfers), while joining text costs a tenth of that and PostgreSQL parses it in microseconds.
# Reasons may hold commas, so they go as a real text[].
LOCK_ACCOUNTS = """
SELECT id, balance_cents, currency FROM accounts
WHERE id = ANY(string_to_array($1, ',')::bigint[])
ORDER BY id FOR UPDATE
"""
# pg_advisory_xact_lock's key for the large-batch queue: "tran" in ASCII, used by nothing else.
LARGE_BATCH_LOCK = 0x7472_616E
LARGE_BATCH_ACCOUNTS = 64
"""A batch locking more accounts than this waits for the large-batch queue first."""
QUEUE_LARGE_BATCH = "SELECT pg_advisory_xact_lock($1::bigint)"
RECORDED = """
SELECT id, from_account_id, to_account_id, amount_cents, status, reason, job_id FROM transfers
WHERE id = ANY(string_to_array($1, ',')::uuid[])
"""
# A data-modifying CTE runs to completion even though the INSERT does not read it: one round trip.
_MOVE = """
WITH moved AS (
    UPDATE accounts AS a
    SET balance_cents = a.balance_cents + d.delta, updated_at = now()
    FROM unnest(
        string_to_array($1, ',')::bigint[], string_to_array($2, ',')::bigint[]
    ) AS d(id, delta)
    WHERE a.id = d.id
)
INSERT INTO transfers (id, from_account_id, to_account_id, amount_cents, status, reason, job_id)
"""
WRITE = (
    _MOVE
    + """SELECT r.*, $9::text FROM unnest(
    string_to_array($3, ',')::uuid[],
    string_to_array($4, ',')::bigint[],
    string_to_array($5, ',')::bigint[],
    string_to_array($6, ',')::bigint[],
    string_to_array($7, ',')::text[],
    $8::text[]
) AS r
"""
)
# A group's rows belong to several jobs: one job id per row, as a real text[] (ids may hold commas).
WRITE_GROUP = (
    _MOVE
    + """SELECT * FROM unnest(
    string_to_array($3, ',')::uuid[],
    string_to_array($4, ',')::bigint[],
    string_to_array($5, ',')::bigint[],
    string_to_array($6, ',')::bigint[],
    string_to_array($7, ',')::text[],
    $8::text[],
    $9::text[]
) AS r
"""
)
LEDGER_KEY = "pk_transfers"


async def lock_accounts(
    conn: AsyncConnection, account_ids: list[int]
) -> tuple[Any, list[AccountRow]]:
    """Lock `account_ids` in ascending order, after the large-batch queue when there are many;
    (the raw asyncpg connection, inside this transaction, for the statements that follow; the
    accounts' rows).

    The first statement goes through SQLAlchemy, which begins the transaction with it, so the
    raw connection needs no statement of its own first (jobs.db.driver_connection's): one round
    trip less. For a few accounts that is the lock itself; many accounts' rows are read through
    the raw connection, whose records cost less to build than SQLAlchemy's rows.
    """
    if len(account_ids) <= LARGE_BATCH_ACCOUNTS:
        rows = (await conn.exec_driver_sql(LOCK_ACCOUNTS, (joined(account_ids),))).all()
        driver: Any = (await conn.get_raw_connection()).driver_connection
        return driver, cast(list[AccountRow], rows)
    # Before any row lock, so no job waits for this while holding an account.
    await conn.exec_driver_sql(QUEUE_LARGE_BATCH, (LARGE_BATCH_LOCK,))
    driver = (await conn.get_raw_connection()).driver_connection
    return driver, await driver.fetch(LOCK_ACCOUNTS, joined(account_ids))


async def recorded_transfers(
    driver: Any, transfers: Sequence[TransferItem]
) -> dict[UUID, RecordedTransfer]:
    """The ledger's rows for the batch's ids: none for new ids, so new batches pay nothing more."""
    rows = await driver.fetch(RECORDED, joined_ids([transfer.id for transfer in transfers]))
    return {row[0]: RecordedTransfer(*row[1:]) for row in rows}


async def apply_set_based(
    driver: Any, *, deltas: dict[int, int], ledger: list[LedgerRow], job_id: str | None
) -> None:
    """Write net balance changes and ledger rows (marked with `job_id`) in one statement.

    Ledger rows go in id order so that two jobs carrying the same new ids meet on the ledger's
    key in the same order: one waits for the other instead of both waiting for each other.
    """
    account_ids = sorted(deltas)
    rows = sorted(ledger, key=lambda row: row.id.int)  # .int: PostgreSQL's order of uuids
    await driver.execute(
        WRITE,
        joined(account_ids),
        joined([deltas[account_id] for account_id in account_ids]),
        joined_ids([row.id for row in rows]),
        joined([row.from_account_id for row in rows]),
        joined([row.to_account_id for row in rows]),
        joined([row.amount_cents for row in rows]),
        ",".join([row.status for row in rows]),
        [row.reason for row in rows],
        job_id,
    )


def joined(numbers: list[int]) -> str:
    return ",".join(map(str, numbers))


def joined_ids(ids: list[UUID]) -> str:
    return ",".join([transfer_id.hex for transfer_id in ids])  # PostgreSQL reads uuids undashed


async def write_group(driver: Any, *, deltas: dict[int, int], ledger: list[GroupLedgerRow]) -> None:
    """`apply_set_based` for a group: the same statement, with each ledger row's own job id."""
    account_ids = sorted(deltas)
    rows = sorted(ledger, key=lambda entry: entry.row.id.int)  # as apply_set_based, for the key
    await driver.execute(
        WRITE_GROUP,
        joined(account_ids),
        joined([deltas[account_id] for account_id in account_ids]),
        joined_ids([entry.row.id for entry in rows]),
        joined([entry.row.from_account_id for entry in rows]),
        joined([entry.row.to_account_id for entry in rows]),
        joined([entry.row.amount_cents for entry in rows]),
        ",".join([entry.row.status for entry in rows]),
        [entry.row.reason for entry in rows],
        [entry.job_id for entry in rows],
    )
