"""`nightly_export`: every dataset as gzipped CSV from one snapshot, retention, one run per tick."""

from __future__ import annotations

import asyncio
import csv
import errno
import gzip
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import result_key_prefix
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs import schema as tables
from jobs.errors import ConfigError
from jobs.exports.files import ExportFileError, StagedFile
from jobs.exports.nightly import NightlyPayload, nightly_export
from jobs.registry import get_dataset
from tests.support.worker_helpers import make_worker
from worker.context import AppContext
from worker.redis import connect
from worker.runner import RunHandle
from worker.settings import Settings

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NIGHTLY = re.compile(r"nightly-(\w+)-\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{8}\.csv\.gz")


async def seed(engine: AsyncEngine, *, customers: int = 5, first: int = 1) -> None:
    ids = range(first, first + customers)
    async with engine.begin() as conn:
        await conn.execute(
            insert(tables.customers),
            [
                {
                    "external_id": f"C{i}",
                    "email": f"c{i}@example.com",
                    "full_name": f"Customer {i}",
                    "country": "GB",
                    "created_at": T0,
                    "updated_at": T0 + timedelta(days=i),
                }
                for i in ids
            ],
        )
        await conn.execute(
            insert(tables.accounts),
            [
                {"id": i, "customer_external_id": f"C{i}", "currency": "EUR", "balance_cents": i}
                for i in ids
            ],
        )
        await conn.execute(
            insert(tables.transfers),
            [
                {
                    "id": uuid.uuid4(),
                    "from_account_id": i,
                    "to_account_id": i + 1,
                    "amount_cents": 1,
                    "status": "rejected",
                    "reason": "test",
                }
                for i in ids
            ],
        )


def csv_keys(path: Path, key: str) -> list[str]:
    with gzip.open(path, "rt", newline="") as f:
        return sorted(row[key] for row in csv.DictReader(f))


async def db_keys(engine: AsyncEngine, dataset: str, key: str) -> list[str]:
    table = get_dataset(dataset).table
    async with engine.connect() as conn:
        return sorted(str(value) for value in (await conn.execute(select(table.c[key]))).scalars())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def tree(root: Path) -> dict[str, list[str]]:
    """Each directory under `root` (relative) with the names of the files in it."""
    out = {}
    for directory, _, files in os.walk(root):
        out[os.path.relpath(directory, root)] = sorted(files)
    return out


def place(directory: Path, name: str, *, manifest: bool = True, age_s: float = 0) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for path in [directory / name] + ([directory / (name + ".manifest.json")] if manifest else []):
        path.write_bytes(b"old")
        if age_s:
            then = time.time() - age_s
            os.utime(path, (then, then))


async def run_nightly(app: AppContext, run: RunHandle | None = None) -> dict[str, Any]:
    run = run or RunHandle(app=app, job_id="nightly_export:1767232800123", job_try=1)
    result = await nightly_export.impl(run, NightlyPayload())
    return result.model_dump(mode="json")


async def test_nightly_writes_each_dataset_as_gzipped_csv(
    app: AppContext, engine: AsyncEngine
) -> None:
    await seed(engine)
    result = await run_nightly(app)

    assert result["deleted"] == []
    assert [export["dataset"] for export in result["exports"]] == [
        "customers",
        "accounts",
        "transfers",
    ]
    snapshots = set()
    for export, key in zip(result["exports"], ("external_id", "id", "id"), strict=True):
        path = Path(export["path"])
        assert path.parent == app.settings.export_dir / export["dataset"]
        match = NIGHTLY.fullmatch(path.name)
        assert match is not None and match.group(1) == export["dataset"]
        assert (export["format"], export["compressed"], export["rows"]) == ("csv", True, 5)
        assert csv_keys(path, key) == await db_keys(engine, export["dataset"], key)
        manifest = read_json(path.with_name(path.name + ".manifest.json"))
        assert (manifest["rows"], manifest["sha256"]) == (5, export["sha256"])
        snapshots.add(manifest["snapshot_at"])
    assert len(snapshots) == 1  # one snapshot for all three files


@dataclass
class MeddlingRun(RunHandle):
    """Commits a new customer and an account for it from another connection at every report."""

    engine: Any = None
    added: int = 0

    async def progress(self, **counters: int) -> None:
        self.added += 1
        await seed(self.engine, customers=1, first=1000 + self.added)
        await super().progress(**counters)


async def test_the_nightly_files_agree_with_each_other(
    app: AppContext, engine: AsyncEngine
) -> None:
    await seed(engine)
    before = {
        "customers": await db_keys(engine, "customers", "external_id"),
        "accounts": await db_keys(engine, "accounts", "id"),
    }
    run = MeddlingRun(app=app, job_id=uuid.uuid4().hex, job_try=1, engine=engine)
    result = await run_nightly(app, run)
    assert run.added >= 3  # rows were committed while each dataset was being written
    files = {export["dataset"]: Path(export["path"]) for export in result["exports"]}
    assert csv_keys(files["customers"], "external_id") == before["customers"]
    assert csv_keys(files["accounts"], "id") == before["accounts"]
    assert len(await db_keys(engine, "accounts", "id")) == 5 + run.added


async def test_retention_keeps_the_newest_nightly_files(
    app: AppContext, engine: AsyncEngine
) -> None:
    await seed(engine)
    app = AppContext(
        settings=app.settings.model_copy(update={"export_keep": 3}),
        engine=app.engine,
        sessionmaker=app.sessionmaker,
    )
    export_dir = app.settings.export_dir
    customers = export_dir / "customers"
    old = [f"nightly-customers-2026010{day}T020000.000Z-0000000{day}.csv.gz" for day in range(1, 6)]
    for name in old:
        place(customers, name)
    kept_by_hand = [
        "customers-20250101T000000.000Z-aaaaaaaa.csv",  # an export asked for by hand
        "customers-20250101T000000.000Z-aaaaaaaa.csv.manifest.json",
        "nightly-customers-notes.txt",  # looks nightly, is not one of ours
        "nightly-accounts-20250101T020000.000Z-bbbbbbbb.csv.gz",  # another dataset's name
    ]
    for name in kept_by_hand:
        place(customers, name, manifest=False)
    stale = ".nightly-customers-20250101T020000.000Z-cccccccc.csv.gz.0badf00d.tmp"
    live = ".nightly-customers-20250101T020000.000Z-dddddddd.csv.gz.0badf00d.tmp"
    place(customers, stale, manifest=False, age_s=3 * 3600)
    place(customers, live, manifest=False, age_s=60)
    place(export_dir / "accounts", "nightly-accounts-20260101T020000.000Z-00000001.csv.gz")

    result = await run_nightly(app)

    assert result["deleted"] == [str(customers / name) for name in reversed(old[:3])]
    new = {export["dataset"]: Path(export["path"]).name for export in result["exports"]}
    assert tree(export_dir)["customers"] == sorted(
        [
            new["customers"],
            new["customers"] + ".manifest.json",
            *old[3:],
            *(name + ".manifest.json" for name in old[3:]),
            *kept_by_hand,
            live,
        ]
    )
    assert len([n for n in tree(export_dir)["accounts"] if n.endswith(".gz")]) == 2


@pytest.fixture
def restore_tz() -> Iterator[None]:
    before = os.environ.get("TZ")
    yield
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.mark.parametrize(
    ("datasets", "message"),
    [
        (
            "customers,orders",
            "ETL_NIGHTLY_DATASETS: unknown dataset 'orders'; known: accounts, customers, transfers",
        ),
        (
            " , ",
            "ETL_NIGHTLY_DATASETS names no dataset; give some of accounts, customers, transfers",
        ),
    ],
)
async def test_an_unknown_nightly_dataset_fails_clearly(
    app: AppContext, engine: AsyncEngine, datasets: str, message: str
) -> None:
    await seed(engine)
    settings = app.settings.model_copy(update={"nightly_datasets": datasets})
    app = AppContext(settings=settings, engine=app.engine, sessionmaker=app.sessionmaker)
    with pytest.raises(ConfigError) as caught:
        await run_nightly(app)
    assert str(caught.value) == message
    assert not settings.export_dir.exists()


def test_the_nightly_time_is_utc_whatever_the_machine_zone(
    settings: Settings, restore_tz: None
) -> None:
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    worker = make_worker(settings, redis=None)
    (cron,) = worker.cron_jobs
    cron.calculate_next(datetime(2026, 11, 22, 12, 0, tzinfo=worker.timezone))
    assert cron.next_run == datetime(2026, 11, 23, 2, 0, 0, 123456, tzinfo=UTC)


async def test_two_workers_on_one_queue_run_a_tick_once(
    settings: Settings, redis: ArqRedis, engine: AsyncEngine, clean_db: None
) -> None:
    """arq's cron(unique=True): every worker enqueues the tick under one id; one of them runs it."""
    await seed(engine)
    tick = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
    settings = settings.model_copy(update={"nightly_at": tick.time()})
    job_id = f"nightly_export:{int(tick.timestamp()) * 1000 + 123}"
    pools = [await connect(settings) for _ in range(2)]
    workers = [make_worker(settings, pool, burst=False, poll_delay=0.05) for pool in pools]
    tasks = [asyncio.create_task(worker.main()) for worker in workers]
    try:
        deadline = time.monotonic() + 30
        while not sum(worker.jobs_complete + worker.jobs_failed for worker in workers):
            assert time.monotonic() < deadline, "the nightly tick did not run"
            assert not any(task.done() for task in tasks), [t.exception() for t in tasks]
            await asyncio.sleep(0.1)
        # Both workers' cron windows for this tick have passed by now; give a second run a chance.
        await asyncio.sleep(1.5)
        # A worker whose loop stalled past the run enqueues the tick late: arq refuses the id.
        late = await redis.enqueue_job(
            "nightly_export", _job_id=job_id, _queue_name=settings.queue_name
        )
        assert late is None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for worker in workers:
            await worker.close()

    assert sum(worker.jobs_complete for worker in workers) == 1
    assert await redis.exists(result_key_prefix + job_id)
    assert sum(worker.jobs_failed + worker.jobs_retried for worker in workers) == 0
    for dataset in ("customers", "accounts", "transfers"):
        files = [n for n in tree(settings.export_dir)[dataset] if n.endswith(".csv.gz")]
        assert len(files) == 1, files
        assert NIGHTLY.fullmatch(files[0])


def failing(method: str, *, dataset: str, name_has: str) -> Any:
    """StagedFile.`method`, failing with ENOSPC for `dataset`'s files whose name has `name_has`."""
    original = getattr(StagedFile, method)

    def patched(self: StagedFile, *args: Any) -> Any:
        if self.final.parent.name == dataset and name_has in self.final.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args)

    return patched


@pytest.mark.parametrize(
    ("method", "dataset", "name_has", "step"),
    [
        # the second of three data files fails while it is written
        ("_put", "accounts", ".csv.gz", "while writing accounts"),
        # every data file is written; then the second one's manifest fails
        ("_put", "accounts", ".manifest.json", "while publishing"),
        # renames: the second data file, the first and the last manifests
        ("_make_visible", "accounts", ".csv.gz", "while publishing"),
        ("_make_visible", "customers", ".manifest.json", "while publishing"),
        ("_make_visible", "transfers", ".manifest.json", "while publishing"),
    ],
)
async def test_a_tick_publishes_all_its_files_or_none(
    app: AppContext,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    dataset: str,
    name_has: str,
    step: str,
) -> None:
    await seed(engine)
    kept = "nightly-customers-20260101T020000.000Z-00000001.csv.gz"
    place(app.settings.export_dir / "customers", kept)  # an earlier night's, left as it was
    monkeypatch.setattr(StagedFile, method, failing(method, dataset=dataset, name_has=name_has))

    with pytest.raises(ExportFileError) as caught:
        await run_nightly(app)

    assert str(caught.value) == (
        f"export failed {step}; no file of this export was published:"
        " OSError: [Errno 28] No space left on device"
    )
    assert tree(app.settings.export_dir) == {
        ".": [],
        "customers": [kept, kept + ".manifest.json"],  # nothing of this tick, no temp file
        "accounts": [],
        "transfers": [],
    }
    monkeypatch.undo()
    result = await run_nightly(app)  # the next tick publishes the three files
    assert [export["rows"] for export in result["exports"]] == [5, 5, 5]
