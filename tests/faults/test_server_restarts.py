"""PostgreSQL or Redis restarts under a running worker: the worker stays up and the work gets done.

Both are the fault suite's private servers (the machine's own serve other tests meanwhile).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.support.processes import wait_for_progress, wait_for_result, wait_until_running
from tests.support.rig import Rig
from worker.redis import connect

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]


async def test_postgresql_restart_mid_jobs_they_are_retried_and_complete_once(rig: Rig) -> None:
    worker = await rig.start_worker()
    loads = {
        f"load{n}": await rig.enqueue(
            "load_customers", prefix=f"load{n}", rows=20_000, chunk=2_000, pause_s=0.1
        )
        for n in range(3)
    }
    naps = [await rig.enqueue("nap", key=f"nap{n}", seconds=1) for n in range(3)]
    await wait_for_progress(rig.redis, loads["load0"], "rows", 2_000, within_s=20)

    # A fast shutdown aborts the open transactions and drops every connection; while it is down
    # the socket is gone, so new connections fail too.
    rig.servers.postgres.stop()
    await asyncio.sleep(1.5)
    rig.servers.postgres.start()

    records = {
        job: await wait_for_result(rig.redis, job, within_s=60) for job in [*loads.values(), *naps]
    }
    assert all(record["s"] for record in records.values()), records
    for prefix, job in loads.items():
        assert records[job]["r"]["rows"] == 20_000
        assert (
            await rig.sql("select count(*) from customers where external_id like $1", prefix + "-%")
            == 20_000
        )
    assert await rig.sql("select count(*) from customers where external_id like 'nap%'") == 3
    tries = [record["t"] for record in records.values()]
    assert max(tries) >= 2, "no job noticed the restart"

    retried = [
        e for e in worker.events() if e["event"] == "job.finished" and e["status"] == "retrying"
    ]
    assert retried
    for line in retried:
        assert line["error_type"] in {
            "DBAPIError",
            "InterfaceError",
            "OperationalError",
            "ConnectionDoesNotExistError",
            "AdminShutdownError",
            "ConnectionRefusedError",
            "FileNotFoundError",
            "CannotConnectNowError",
        }, line
    assert worker.alive()
    # And afterwards, a new job on the restarted server.
    ping = await rig.enqueue("ping")
    assert (await wait_for_result(rig.redis, ping, within_s=20))["r"] == {
        "pong": True,
        "database": True,
    }


async def test_redis_restart_the_worker_reconnects_and_takes_new_jobs(rig: Rig) -> None:
    worker = await rig.start_worker()
    before = await rig.enqueue("ping")
    assert (await wait_for_result(rig.redis, before, within_s=20))["s"] is True
    running = await rig.enqueue("nap", key="across", seconds=2)
    await wait_until_running(rig.redis, running, within_s=10)

    # Killed, so nothing is saved: the restarted Redis is empty, as after a failover to a replica
    # that had not yet received the latest writes.
    rig.servers.redis.stop()
    await asyncio.sleep(1)
    rig.servers.redis.start()
    await rig.redis.aclose()
    rig.redis = await connect(rig.settings)

    after = await rig.enqueue("ping")
    record = await wait_for_result(rig.redis, after, within_s=30)
    assert record["r"] == {"pong": True, "database": True}
    assert worker.alive()
    # The job that ran across the restart finished and committed once; its outcome was recorded
    # in the new Redis.
    across = await wait_for_result(rig.redis, running, within_s=10)
    assert across["r"] == {"key": "across", "tries": 1}
    assert await rig.sql("select count(*) from customers where external_id = 'across'") == 1
