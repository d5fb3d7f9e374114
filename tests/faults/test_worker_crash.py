"""A worker killed with SIGKILL mid-job: the next worker runs the job again, once, all or none.

arq would hold a dead worker's job for the longest job timeout + 10 s (over an hour here); the
runner's heartbeat keeps that to ETL_REQUEUE_AFTER (5 s in these tests).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from arq.constants import in_progress_key_prefix

from tests.support.processes import wait_for_progress, wait_for_result
from tests.support.rig import CountWatcher, Rig

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


async def test_killed_mid_load_the_job_runs_again_once_and_readers_never_see_part_of_it(
    rig: Rig,
) -> None:
    rows = 100_000
    first = await rig.start_worker()
    # About 4 s of work: 20 chunks 0.2 s apart, all in one transaction.
    job_id = await rig.enqueue("load_customers", prefix="big", rows=rows, chunk=5_000, pause_s=0.2)
    count = "select count(*) from customers where external_id like 'big-%'"
    async with CountWatcher(rig.servers.postgres.admin_dsn, count) as watcher:
        await wait_for_progress(rig.redis, job_id, "rows", 5_000, within_s=30)
        await asyncio.sleep(1)  # a good part of the rows written, not committed
        # The heartbeat has already cut arq's hour-long hold to ETL_REQUEUE_AFTER.
        assert 0 < await rig.redis.pttl(in_progress_key_prefix + job_id) <= 5_000
        first.kill()
        killed_at = time.monotonic()
        assert await rig.sql(count) == 0

        second = await rig.start_worker()
        record = await wait_for_result(rig.redis, job_id, within_s=60)
        waited = time.monotonic() - killed_at
    assert record["s"] is True, record
    assert record["r"] == {"rows": rows, "tries": 2}
    assert await rig.sql(count) == rows
    assert await rig.sql("select count(distinct external_id) from customers") == rows
    # It ran again once the dead worker's 5 s hold ran out, not an hour later.
    assert waited < 30
    assert watcher.reads > 50
    assert watcher.seen <= {0, rows}, watcher.seen
    assert second.alive()
