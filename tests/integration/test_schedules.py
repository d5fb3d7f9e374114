"""Schedules as data: a schedules file's entries run once per tick across workers, keep their own
files, and `etl schedules` / `etl worker` read the same file."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from arq.connections import ArqRedis
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs import schema as tables
from tests.support.etl_process import cli_env, drop_queue, etl
from tests.support.worker_helpers import make_worker
from worker import schedules
from worker.main import ARQ_TIMEOUT_MARGIN_S
from worker.redis import connect
from worker.settings import Settings
from worker.status import read_state

pytestmark = pytest.mark.timeout(180)

OLD_FILES = [
    "every-tick-customers-20240101T000000.000Z-0000000a.csv",
    "every-tick-customers-20240102T000000.000Z-0000000b.csv",
    "every-tick-customers-20240103T000000.000Z-0000000c.csv",
]
OTHERS = [
    "nightly-customers-20240101T000000.000Z-0000000d.csv.gz",  # the nightly export's
    "customers-20240101T000000.000Z-0000000e.csv",  # asked for by hand
    "other-every-tick-customers-20240101T000000.000Z-0000000f.csv",  # another entry's
]


def schedules_file(tmp_path: Path, tick: datetime) -> Path:
    when = f"{tick.minute} {tick.hour} * * *"
    path = tmp_path / "schedules.toml"
    path.write_text(
        "[[schedule]]\n"
        'name = "every-tick"\n'
        f'cron = "{when}"\n'
        'job = "export_dataset"\n'
        'args = { dataset = "customers" }\n'
        "keep = 2\n"
        "\n"
        "[[schedule]]\n"
        'name = "tick-ping"\n'
        f'cron = "{when}"\n'
        'job = "ping"\n'
    )
    return path


async def seed(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(tables.customers),
            [
                {
                    "external_id": f"C{i}",
                    "email": f"c{i}@example.com",
                    "full_name": f"Customer {i}",
                    "country": "GB",
                    "created_at": datetime(2026, 1, 1, tzinfo=UTC),
                }
                for i in range(3)
            ],
        )


async def test_each_entry_runs_once_per_tick_with_two_workers(
    settings: Settings, redis: ArqRedis, engine: AsyncEngine, clean_db: None, tmp_path: Path
) -> None:
    await seed(engine)
    directory = settings.export_dir / "customers"
    directory.mkdir(parents=True)
    for name in OLD_FILES + OTHERS:
        (directory / name).write_text("old\n")
    tick = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
    settings = settings.model_copy(update={"schedules_file": schedules_file(tmp_path, tick)})
    # The file's crontab says the minute; the tick's second is set here so that the test need
    # not wait for the next minute (the default nightly entry has a second of its own too).
    entries = [replace(entry, second=tick.second) for entry in schedules.load_schedules(settings)]
    cron_jobs = schedules.cron_jobs(entries, settings, timeout_margin_s=ARQ_TIMEOUT_MARGIN_S)
    pools = [await connect(settings) for _ in range(2)]
    workers = [
        make_worker(settings, pool, burst=False, poll_delay=0.05, cron_jobs=cron_jobs)
        for pool in pools
    ]
    tasks = [asyncio.create_task(worker.main()) for worker in workers]
    try:
        deadline = time.monotonic() + 30
        while sum(worker.jobs_complete + worker.jobs_failed for worker in workers) < 2:
            assert time.monotonic() < deadline, "the tick did not run"
            assert not any(task.done() for task in tasks), [t.exception() for t in tasks]
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # both workers' windows for this tick have passed
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for worker in workers:
            await worker.close()
        for pool in pools:
            await pool.aclose()

    assert sum(worker.jobs_complete for worker in workers) == 2
    assert sum(worker.jobs_failed + worker.jobs_retried for worker in workers) == 0
    tick_ms = int(tick.timestamp()) * 1000 + 123
    export = await read_state(
        redis, f"export_dataset@every-tick:{tick_ms}", queue_name=settings.queue_name
    )
    pinged = await read_state(redis, f"ping@tick-ping:{tick_ms}", queue_name=settings.queue_name)
    assert (export.state, export.function, pinged.state) == (
        "complete",
        "export_dataset@every-tick",
        "complete",
    )
    assert pinged.result == {"pong": True, "database": True}
    written = Path(export.result["path"])
    assert (written.parent, export.result["rows"]) == (directory, 3)
    assert written.name.startswith("every-tick-customers-")
    # keep = 2: the new file and the newest older one; nobody else's files are touched.
    assert export.result["deleted"] == [
        str(directory / OLD_FILES[1]),
        str(directory / OLD_FILES[0]),
    ]
    kept = sorted(p.name for p in directory.iterdir() if not p.name.endswith(".manifest.json"))
    assert kept == sorted([written.name, OLD_FILES[2], *OTHERS])


@pytest.fixture
async def env(settings: Settings, redis: ArqRedis, tmp_path: Path) -> dict[str, str]:
    yield cli_env(settings, tmp_path)
    await drop_queue(redis, settings.queue_name)


GOOD = """
[[schedule]]
name = "hourly-transfers"
cron = "5 * * * *"
job = "export_dataset"
args = { dataset = "transfers", incremental = "hourly-transfers" }
keep = 48

[[schedule]]
name = "nightly-customers"
cron = "30 1 * * *"
job = "export_dataset"
args = { dataset = "customers", compress = true }
keep = 7
"""


async def test_etl_schedules_lists_each_entry_and_its_next_run(
    env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "schedules.toml").write_text(GOOD)
    env["ETL_SCHEDULES"] = str(tmp_path / "schedules.toml")
    before = datetime.now(UTC)
    text = await etl("schedules", env=env, cwd=tmp_path)
    listed = await etl("schedules", "--json", env=env, cwd=tmp_path)
    after = datetime.now(UTC)
    assert (text.code, text.stderr, listed.code, listed.stderr) == (0, "", 0, "")

    def next_runs(minute: int, hour: int | None) -> set[str]:
        runs = set()
        for now in (before, after):
            run = now.replace(minute=minute, second=0, microsecond=0)
            if hour is not None:
                run = run.replace(hour=hour)
            while run <= now:
                run += timedelta(hours=1 if hour is None else 24)
            runs.add(run.isoformat().replace("+00:00", "Z"))
        return runs

    hourly, nightly = json.loads(listed.stdout)
    assert hourly.pop("next_run") in next_runs(5, None)
    assert nightly.pop("next_run") in next_runs(30, 1)
    assert hourly == {
        "name": "hourly-transfers",
        "job": "export_dataset",
        "function": "export_dataset@hourly-transfers",
        "cron": "5 * * * *",
        "args": {"dataset": "transfers", "incremental": "hourly-transfers"},
        "keep": 48,
    }
    assert nightly["function"] == "export_dataset@nightly-customers"

    header, first, second = text.stdout.splitlines()
    assert header == (
        "NAME               JOB             CRON (UTC)  NEXT RUN (UTC)        KEEP  ARGUMENTS"
    )
    assert first.split()[:7] == ["hourly-transfers", "export_dataset", "5", "*", "*", "*", "*"]
    assert first.split()[7] in next_runs(5, None)
    assert first.endswith('  48    {"dataset": "transfers", "incremental": "hourly-transfers"}')
    assert second.split()[7:9] == [nightly_next := second.split()[7], "7"]
    assert nightly_next in next_runs(30, 1)
    # The columns line up under the header.
    assert first.index("export_dataset") == header.index("JOB") == second.index("export_dataset")


async def test_without_a_file_etl_schedules_shows_the_nightly_export(
    env: dict[str, str], tmp_path: Path
) -> None:
    env["ETL_NIGHTLY_AT"] = "04:10"
    [entry] = json.loads((await etl("schedules", "--json", env=env, cwd=tmp_path)).stdout)
    assert {k: v for k, v in entry.items() if k != "next_run"} == {
        "name": "nightly_export",
        "job": "nightly_export",
        "function": "nightly_export",
        "cron": "10 4 * * *",
        "args": {},
        "keep": 7,
    }
    assert entry["next_run"].endswith("T04:10:00Z")


async def test_a_bad_schedules_file_stops_the_worker_in_one_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "schedules.toml"
    path.write_text(
        GOOD.replace(
            'job = "export_dataset"\nargs = { dataset = "customers"',
            'job = "export_datasets"\nargs = { dataset = "customers"',
        )
    )
    env["ETL_SCHEDULES"] = str(path)
    for command in ("worker", "schedules"):
        done = await etl(command, env=env, cwd=tmp_path)
        assert (done.code, done.stdout) == (2, ""), done.stderr
        assert done.stderr == (
            f"etl: ETL_SCHEDULES {path}: schedule 'nightly-customers': unknown job "
            "'export_datasets'; known: export_dataset, import_file, nightly_export, ping, "
            "transfer_funds, upsert_rows\n"
        )
