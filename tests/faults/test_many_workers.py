"""Three worker processes, three host names, one Redis, one PostgreSQL: the way to scale out.

Every job runs once and each worker takes a share; the nightly tick, which all three schedule,
runs once; `etl check` and the dashboard's /api/workers list the three by host; a worker killed
with SIGKILL mid-job has that job run again by another one, once, within ETL_REQUEUE_AFTER.
Which worker ran a job is read from the `job.finished` lines in each process's own output.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from arq.constants import in_progress_key_prefix
from arq.utils import to_unix_ms
from starlette.testclient import TestClient

from tests.support.etl_process import drop_queue
from tests.support.processes import (
    ROOT,
    WORKER_WITH_STAND_INS,
    WorkerProcess,
    poll,
    stored_result,
    wait_for_result,
)
from tests.support.rig import Rig
from worker.dashboard.app import create_app
from worker.keys import workers_key
from worker.settings import Settings
from worker.workers import list_workers

pytestmark = [pytest.mark.faults, pytest.mark.timeout(150)]

HOSTS = ("host-a", "host-b", "host-c")
NIGHTLY_LEAD_S = 20
"""How far ahead the nightly tick is set: the three workers must start before it (2-3 s here, but
10-15 s on a 2-core machine running two suites at once). If they start later, they schedule
tomorrow's tick: the test then starts them again with a lead fitted to the start-up it saw."""
REQUEUE_SLACK_S = 10
"""Beyond ETL_REQUEUE_AFTER: arq's poll, a survivor's start of the job, a loaded machine."""


async def start_workers(rig: Rig, **env: str) -> dict[str, WorkerProcess]:
    """One worker process per host name, all started (spawned together, so they start at once)."""
    spawned = {
        host: rig.spawn_worker(command=WORKER_WITH_STAND_INS, ETL_WORKER_NAME=host, **env)
        for host in HOSTS
    }
    await asyncio.gather(*(w.started(within_s=60) for w in spawned.values()))
    return spawned


async def start_before_nightly(rig: Rig) -> tuple[dict[str, WorkerProcess], datetime]:
    """Three workers that all scheduled the same nightly tick, a few seconds from now; the tick."""
    lead_s = float(NIGHTLY_LEAD_S)
    for _ in range(2):
        tick = (datetime.now(UTC) + timedelta(seconds=lead_s)).replace(microsecond=0)
        began = time.monotonic()
        workers = await start_workers(rig, ETL_NIGHTLY_AT=tick.strftime("%H:%M:%S"))
        took = time.monotonic() - began
        next_runs = {host: nightly_next_run(w) for host, w in workers.items()}
        if all(abs(when - tick) < timedelta(seconds=1) for when in next_runs.values()):
            return workers, next_runs[HOSTS[0]]
        # Some started after the tick (they run tomorrow's): start afresh, with no trace of them.
        for worker in workers.values():
            worker.kill()
        await rig.redis.delete(workers_key(rig.settings.queue_name))
        await drop_queue(rig.redis, rig.settings.queue_name)  # today's tick, if some queued it
        export_dir = rig.settings.export_dir
        assert isinstance(export_dir, Path)
        shutil.rmtree(export_dir)
        export_dir.mkdir()
        lead_s = 2 * took + 10
    raise AssertionError(f"the workers took over {lead_s:.0f} s to start: {next_runs}")


def finished_lines(workers: dict[str, WorkerProcess]) -> list[tuple[str, dict[str, Any]]]:
    """Every `job.finished` line of every worker, with the host whose output it came from."""
    return [
        (host, record)
        for host, worker in workers.items()
        for record in worker.events()
        if record.get("event") == "job.finished"
    ]


async def etl_check(rig: Rig) -> tuple[int, str]:
    """`etl check` in a process of its own, with the workers' environment; exit code, output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker.cli",
        "check",
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(rig.tmp), **rig.worker_env()},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return int(process.returncode or 0), out.decode(errors="replace")


def api_workers(settings: Settings) -> list[dict[str, Any]]:
    """GET /api/workers from the real dashboard app (it connects to Redis itself)."""
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8787") as client:
        response = client.get("/api/workers")
    assert response.status_code == 200, response.text
    workers: list[dict[str, Any]] = response.json()["workers"]
    return workers


def nightly_next_run(worker: WorkerProcess) -> datetime:
    """When the worker's arq cron will run the nightly export, from its `worker.started` line."""
    started = next(r for r in worker.events() if r.get("event") == "worker.started")
    (entry,) = [c for c in started["cron"] if c["function"] == "nightly_export"]
    return datetime.fromisoformat(entry["next_run"])


async def test_three_workers_run_each_job_and_the_nightly_tick_once_and_are_listed(
    rig: Rig,
) -> None:
    # All three will enqueue the same tick, a few seconds from now.
    workers, next_run = await start_before_nightly(rig)
    pids = {host: w.pid for host, w in workers.items()}

    # `etl check`, a process of its own, lists the three by host name and pid.
    code, output = await etl_check(rig)
    assert code == 0, output
    worker_lines = [line for line in output.splitlines() if line.startswith("worker ")]
    assert len(worker_lines) == 3, output
    for host, pid in pids.items():
        (line,) = [x for x in worker_lines if x.startswith(f"worker {host} pid {pid}: ")]
        assert "jobs running" in line and "stale" not in line, line

    # So does the dashboard's API (the real app, through Starlette's TestClient).
    listed = await asyncio.to_thread(api_workers, rig.settings)
    assert {w["host"]: w["pid"] for w in listed} == pids, listed
    assert all(w["queue"] == rig.settings.queue_name and not w["stale"] for w in listed), listed

    # 60 jobs, each writing one customer keyed by its number (a second run would collide).
    job_ids = {
        await rig.enqueue("nap", key=f"once-{n}", seconds=0.3): f"once-{n}" for n in range(60)
    }
    for job_id, key in job_ids.items():
        record = await wait_for_result(rig.redis, job_id, within_s=60)
        assert record["s"] is True and record["r"] == {"key": key, "tries": 1}, record
    assert await rig.sql("select count(*) from customers where external_id like 'once-%'") == 60
    assert (
        await rig.sql(
            "select count(distinct external_id) from customers where external_id like 'once-%'"
        )
        == 60
    )
    runs = [(host, r) for host, r in finished_lines(workers) if r.get("job_id") in job_ids]
    assert Counter(r["job_id"] for _, r in runs) == Counter(set(job_ids)), "a job ran twice"
    assert all(r["status"] == "complete" and r["job_try"] == 1 for _, r in runs), runs
    shares = Counter(host for host, _ in runs)
    assert set(shares) == set(HOSTS), f"a worker ran none of the jobs: {shares}"

    # The nightly tick: enqueued by all three under one id, run by one of them.
    nightly_id = f"nightly_export:{to_unix_ms(next_run)}"
    wait_s = (next_run - datetime.now(UTC)).total_seconds() + 60
    record = await wait_for_result(rig.redis, nightly_id, within_s=wait_s)
    assert record["s"] is True, record
    # A late duplicate would be enqueued within a second of the tick: give every worker time.
    await asyncio.sleep(max(0.0, (next_run - datetime.now(UTC)).total_seconds()) + 3)
    nightly = [(h, r) for h, r in finished_lines(workers) if r.get("function") == "nightly_export"]
    assert len(nightly) == 1, nightly
    ((_, nightly_line),) = nightly
    assert nightly_line["job_id"] == nightly_id, nightly_line
    assert nightly_line["status"] == "complete", nightly_line
    # One set of files: the tick's, one per dataset (each may have a manifest beside it).
    export_dir = rig.settings.export_dir
    assert isinstance(export_dir, Path)
    written = sorted(p.name for p in export_dir.rglob("nightly-*.csv.gz"))
    exports = {e["dataset"]: Path(e["path"]).name for e in record["r"]["exports"]}
    assert set(exports) == {"customers", "accounts", "transfers"}, exports
    assert written == sorted(exports.values()), written
    assert all(w.alive() for w in workers.values())


async def test_a_killed_workers_job_runs_again_on_another_worker_once(rig: Rig) -> None:
    requeue_after = rig.settings.requeue_after_s
    far_from_now = (datetime.now(UTC) + timedelta(hours=12)).strftime("%H:%M:%S")
    # One job at a time each, so that three naps land on three workers (a job cannot be pinned).
    workers = await start_workers(rig, ETL_NIGHTLY_AT=far_from_now, ETL_MAX_JOBS="1")
    # Long enough to be running when the kill comes, short enough that the survivors are free
    # again by the time the dead worker's hold on its nap runs out; a second try is short.
    naps = {
        await rig.enqueue("nap", key=key, seconds=4.5, seconds_when_retried=0.3): key
        for key in ("long-1", "long-2", "long-3")
    }

    # Which worker holds which nap, and since when, as the registry says.
    holder: dict[str, tuple[datetime, str]] = {}

    async def all_held() -> bool:
        records = await list_workers(rig.redis, queue_name=rig.settings.queue_name)
        holder.clear()
        holder.update({job: (since, w.host) for w in records for job, since in w.running.items()})
        return set(naps) <= set(holder)

    await poll(all_held, within_s=30, what="the registry to show the three naps running")
    assert sorted(holder[job_id][1] for job_id in naps) == sorted(HOSTS), holder
    # The nap started last has the most time left: its worker is the one to kill.
    killed_job = max(naps, key=lambda job_id: holder[job_id][0])
    victim_host = holder[killed_job][1]
    victim = workers[victim_host]
    # Still running, and the heartbeat has cut arq's hold on it to ETL_REQUEUE_AFTER.
    assert await stored_result(rig.redis, killed_job) is None
    hold_ms = await rig.redis.pttl(in_progress_key_prefix + killed_job)
    assert 0 < hold_ms <= requeue_after * 1000, hold_ms
    victim.kill()
    killed_at = time.monotonic()

    record = await wait_for_result(
        rig.redis, killed_job, within_s=requeue_after + REQUEUE_SLACK_S + 20
    )
    waited = time.monotonic() - killed_at
    assert record["s"] is True and record["r"] == {"key": naps[killed_job], "tries": 2}, record
    # Run again once the dead worker's hold ran out (not before), and not long after.
    assert hold_ms / 1000 - 0.5 < waited < requeue_after + REQUEUE_SLACK_S, (hold_ms, waited)
    for job_id, key in naps.items():
        record = await wait_for_result(rig.redis, job_id, within_s=30)
        assert record["s"] is True and record["r"]["key"] == key, record

    # One row per nap: the killed try rolled back, the second try committed.
    assert await rig.sql("select count(*) from customers where external_id like 'long-%'") == 3
    for key in naps.values():
        assert await rig.sql("select count(*) from customers where external_id = $1", key) == 1
    runs = [(host, r) for host, r in finished_lines(workers) if r.get("job_id") in naps]
    assert Counter(r["job_id"] for _, r in runs) == Counter(set(naps)), runs
    for host, line in runs:
        assert line["status"] == "complete", line
        if line["job_id"] == killed_job:
            assert host != victim_host and line["job_try"] == 2, line
        else:
            assert host == holder[line["job_id"]][1] and line["job_try"] == 1, line
    assert [h for h, w in workers.items() if w.alive()] == [h for h in HOSTS if h != victim_host]
