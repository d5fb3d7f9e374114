"""The real import job under a worker killed with SIGKILL, and under SIGTERM past the grace.

After the next worker has run it, the table holds exactly the file's valid rows, the rejects are
recorded once, and a reader on another connection never saw a part of the file: only none or all.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.support.processes import wait_for_progress, wait_for_result
from tests.support.rig import CountWatcher, Rig

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

VALID = 300_000
INVALID = 120  # bad country codes: rejected by the row rules, well under the 5% allowed
COUNT = "select count(*) from customers"


def write_customers(path: Path) -> None:
    lines = ["external_id,email,full_name,country,created_at"]
    bad_every = VALID // INVALID
    for n in range(1, VALID + INVALID + 1):
        country = "FRA" if n % (bad_every + 1) == 0 else "FR"
        lines.append(f"cust-{n},cust{n}@example.com,Customer {n},{country},2024-05-01T12:00:00Z")
    path.write_text("\n".join(lines) + "\n")


async def test_killed_mid_import_the_next_worker_loads_exactly_the_valid_rows(rig: Rig) -> None:
    write_customers(rig.settings.import_dir / "customers.csv")
    first = await rig.start_worker()
    job_id = await rig.enqueue("import_file", dataset="customers", path="customers.csv")
    async with CountWatcher(rig.servers.postgres.admin_dsn, COUNT) as watcher:
        await wait_for_progress(rig.redis, job_id, "rows", 1, within_s=30)
        # The import takes about 4 s here (2 cores); a second in, it is well under way.
        await asyncio.sleep(1)
        first.kill()
        killed_at = time.monotonic()
        assert await rig.sql(COUNT) == 0

        await rig.start_worker()
        record = await wait_for_result(rig.redis, job_id, within_s=90)
        waited = time.monotonic() - killed_at
        await asyncio.sleep(0.1)  # one more read after the commit
    assert record["s"] is True, record
    result = record["r"]
    assert record["t"] == 2
    assert (result["rows_read"], result["rejected"]) == (VALID + INVALID, INVALID)
    assert result["inserted"] + result["updated"] + result["skipped"] == VALID
    assert await rig.sql(COUNT) == VALID
    assert await rig.sql("select count(*) from customers where country <> 'FR'") == 0
    assert await rig.sql("select count(*) from import_rejects") == INVALID
    assert await rig.sql("select count(*) from import_runs") == 1
    assert waited < 60
    assert watcher.seen <= {0, VALID}, watcher.seen
    assert VALID in watcher.seen


async def test_sigterm_mid_import_past_the_grace_nothing_then_everything(rig: Rig) -> None:
    write_customers(rig.settings.import_dir / "customers.csv")
    worker = await rig.start_worker(ETL_SHUTDOWN_GRACE="0.2")
    job_id = await rig.enqueue("import_file", dataset="customers", path="customers.csv")
    async with CountWatcher(rig.servers.postgres.admin_dsn, COUNT) as watcher:
        await wait_for_progress(rig.redis, job_id, "rows", 1, within_s=30)
        worker.terminate()
        assert await worker.exited(within_s=20) == 0
        assert await rig.sql(COUNT) == 0
        assert await rig.sql("select count(*) from import_rejects") == 0

        await rig.start_worker()
        record = await wait_for_result(rig.redis, job_id, within_s=90)
    assert (record["s"], record["t"]) == (True, 2)
    assert await rig.sql(COUNT) == VALID
    assert await rig.sql("select count(*) from import_rejects") == INVALID
    assert watcher.seen <= {0, VALID}, watcher.seen
