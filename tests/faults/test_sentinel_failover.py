"""A Redis Sentinel failover under a running worker and an app enqueueing all the while.

A real primary, two replicas and three Sentinels (quorum 2) run on local ports; the worker and
the client reach them through REDIS_URL=redis+sentinel://…. Replication is cut for a moment (the
replicas lose their link and cannot log in again) while the worker is frozen, then the primary is
SIGKILLed: whatever the primary alone took in that moment is gone with it, as when a primary dies
before its replicas caught up. Then:

- no acknowledged job is lost: the client waits for a replica's confirmation (WAIT 1), so what
  the primary alone took was never acknowledged, and was sent again to the new primary;
- the client carries its enqueues through the election instead of failing them;
- the worker follows the promotion and keeps taking jobs.

Each job upserts one customer keyed by its job id, so a job that ran twice still shows as one row.
Two replicas, not one: after the failover the new primary still has a replica to confirm
enqueues, so the test need not restart the killed primary and wait for it to rejoin.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from jobs.errors import describe
from tests.support.processes import WorkerProcess, poll
from tests.support.rig import Rig
from tests.support.sentinel import SentinelGroup, sentinel_executable
from tests.support.servers import redis_executable
from worker.client import EtlClient

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

PREFIX = "fo-"
ENQUEUE_PAUSE_S = 0.1
UNREPLICATED_S = 1.0
"""How long the primary alone takes writes before it is killed."""


@dataclass
class Attempt:
    key: str
    started: float
    ended: float
    error: str | None = None


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    server, sentinel = redis_executable(), sentinel_executable()
    if server is None or sentinel is None:
        pytest.skip("no redis-server / redis-sentinel binaries (apt-get install redis-sentinel)")
    group = SentinelGroup(tmp_path / "sentinel", password="sntpw-" + secrets.token_hex(12))
    try:
        group.start(redis_server=server, redis_sentinel=sentinel)
        yield group
    finally:
        group.close()


def customer(key: str) -> dict[str, object]:
    return {
        "dataset": "customers",
        "rows": [
            {
                "external_id": key,
                "email": f"{key}@example.com",
                "full_name": f"Failover {key}",
                "country": "FR",
            }
        ],
    }


async def enqueue_all_along(etl: EtlClient, attempts: list[Attempt], stop: asyncio.Event) -> None:
    """One upsert at a time, each under its own id, until told to stop; every outcome noted."""
    number = 0
    while not stop.is_set():
        key = f"{PREFIX}{number:05d}"
        number += 1
        started = time.monotonic()
        error = None
        try:
            await etl.upsert_rows(customer(key), _job_id=key)
        except Exception as exc:
            error = f"{type(exc).__name__}: {describe(exc)}"
        attempts.append(Attempt(key, started, time.monotonic(), error))
        await asyncio.sleep(ENQUEUE_PAUSE_S)


async def rows(rig: Rig, key: str = f"{PREFIX}%") -> int:
    count = await rig.sql("select count(*) from customers where external_id like $1", key)
    assert isinstance(count, int)
    return count


def alive(worker: WorkerProcess) -> None:
    assert worker.alive(), f"the worker died; its output:\n{worker.text()[-4000:]}"


async def test_a_failover_loses_no_acknowledged_job_and_the_worker_follows_the_promotion(
    rig: Rig, sentinel_group: SentinelGroup
) -> None:
    group = sentinel_group
    began = time.monotonic()
    settings = rig.settings.model_copy(update={"redis_url": group.url})
    assert settings.wait_replicas == 1
    worker = await rig.start_worker(REDIS_URL=group.url)
    attempts: list[Attempt] = []
    stop = asyncio.Event()
    with capture_logs() as logs:
        async with EtlClient(settings) as etl:
            feeder = asyncio.create_task(enqueue_all_along(etl, attempts, stop))
            try:
                # Before: jobs go through the Sentinels' primary and the worker runs them.
                async def ten_done() -> bool:
                    alive(worker)
                    return await rows(rig) >= 10

                await poll(ten_done, within_s=40, what="10 jobs done before the failover")
                old_port = await asyncio.to_thread(group.primary_port)
                assert group.primary is not None and old_port == group.primary.port
                acked_before = [a.key for a in attempts if a.error is None]

                # The primary alone takes writes, and nothing runs them, for a moment; then it
                # dies, and those writes with it.
                worker.process.send_signal(signal.SIGSTOP)
                try:
                    await asyncio.to_thread(group.cut_replication)
                    cut = time.monotonic()
                    await asyncio.sleep(UNREPLICATED_S)
                    group.kill_primary()
                    killed = time.monotonic()
                    await asyncio.to_thread(group.restore_replication)
                finally:
                    worker.process.send_signal(signal.SIGCONT)

                async def promoted() -> bool:
                    port = await asyncio.to_thread(group.primary_port)
                    return port is not None and port != old_port

                await poll(promoted, within_s=40, what="a replica promoted by the Sentinels")
                promoted_at = time.monotonic()

                # After: the worker follows the promotion and keeps taking jobs.
                def acked_after() -> list[Attempt]:
                    return [a for a in attempts if a.started > promoted_at and a.error is None]

                async def ten_after() -> bool:
                    return len(acked_after()) >= 10

                await poll(ten_after, within_s=40, what="10 jobs enqueued after the promotion")
                first_after = acked_after()[0].key

                async def first_after_ran() -> bool:
                    alive(worker)
                    return await rows(rig, first_after) == 1

                await poll(first_after_ran, within_s=40, what="a job enqueued after it to run")
                resumed = time.monotonic()
            finally:
                stop.set()
                await asyncio.wait({feeder}, timeout=30)
            feeder.result()

            acked = [a.key for a in attempts if a.error is None]

            async def all_ran() -> bool:
                return await rows(rig) >= len(acked)

            with contextlib.suppress(AssertionError):  # the check below names what is missing
                await poll(all_ran, within_s=20, what="all acknowledged jobs to run")
            states = [await etl.status(key) for key in acked]

    ran = await rig.sql(
        "select array_agg(external_id) from customers where external_id like $1", f"{PREFIX}%"
    )
    assert ran is None or isinstance(ran, list)
    lost = sorted(set(acked) - set(ran or []))
    assert lost == [], f"{len(lost)} acknowledged jobs were lost in the failover: {lost}"

    failed = [a for a in attempts if a.error is not None]
    assert failed == [], "enqueues failed instead of being retried through the failover"
    # While the primary alone had the writes, none was acknowledged.
    acked_unreplicated = [a for a in attempts if a.started > cut and a.ended < killed]
    assert acked_unreplicated == []
    # Every acknowledged job ran, those before the failover included, each leaving one row.
    counted = await rig.sql(
        "select count(distinct external_id) = count(*) and count(*) = $1 "
        "from customers where external_id like 'fo-%'",
        len(acked),
    )
    assert counted is True, (await rows(rig), len(acked))
    assert set(acked_before) <= set(acked)
    assert {s.state for s in states} == {"complete"}, [s for s in states if s.state != "complete"]
    # The enqueue under way at the kill (or the next one) was retried until the new primary took
    # it: none could, before the Sentinels had seen the old one down for 1 s.
    across = next(a for a in attempts if a.ended > killed)
    assert across.error is None and across.ended - killed > 1.0, across
    retried = [e for e in logs if e.get("event") == "enqueue.retrying"]
    assert retried, "no enqueue was retried"
    # The worker rode it out in its own retry, soon after the promotion: not after spending its
    # whole allowance on the dead primary's address first.
    alive(worker)
    assert resumed - promoted_at < 10, resumed - promoted_at
    assert group.password not in worker.text()
    assert not [e for e in worker.events() if e.get("level") in {"error", "critical"}]

    runs: dict[str, int] = {}
    for event in worker.events():
        if event.get("event") == "job.finished" and event.get("job_id", "").startswith(PREFIX):
            runs[event["job_id"]] = runs.get(event["job_id"], 0) + 1
    print(
        f"\nsentinel failover: {len(acked)} jobs acknowledged ({len(acked_before)} before the "
        f"cut), {len(retried)} enqueue retries; kill -> promotion seen "
        f"{promoted_at - killed:.1f} s, kill -> first job enqueued after it done "
        f"{resumed - killed:.1f} s; longest enqueue "
        f"{max(a.ended - a.started for a in attempts):.1f} s; jobs run twice: "
        f"{sum(1 for n in runs.values() if n > 1)}; whole test {time.monotonic() - began:.1f} s"
    )
