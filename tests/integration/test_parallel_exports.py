"""`export_dataset(parts=N)` on real PostgreSQL and Redis: one snapshot written as N files by part
jobs any worker may run, published together or not at all."""

from __future__ import annotations

import asyncio
import csv
import errno
import gzip
import hashlib
import io
import itertools
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs import schema as tables
from jobs.errors import InvalidPayload
from jobs.exports import parallel
from jobs.exports import part as part_module
from jobs.exports.part import ExportPartPayload, export_part
from jobs.models import ExportPayload, ExportResult
from tests.support.live_worker import running_worker
from worker.client import EtlClient, JobFailed
from worker.context import AppContext
from worker.runner import RunHandle, validate_payload
from worker.schedules import ScheduleError, _payload
from worker.settings import Settings
from worker.status import read_states

T0 = datetime(2026, 1, 1, tzinfo=UTC)
COLUMNS = "id, external_id, email, full_name, country, created_at, updated_at"


async def seed(engine: AsyncEngine, count: int, *, start: int = 1) -> None:
    rows = [
        {
            "external_id": f"C{i:07d}",
            "email": f"c{i}@example.com",
            "full_name": f"Customer {i}" if i % 7 else f'Awkward, "{i}"\nname',
            "country": "GB" if i % 2 else "US",
            "created_at": T0 + timedelta(minutes=i),
            "updated_at": T0 + timedelta(minutes=i),
        }
        for i in range(start, start + count)
    ]
    async with engine.begin() as conn:
        await conn.execute(insert(tables.customers), rows)


def csv_rows(data: bytes) -> list[list[str]]:
    """The rows of a CSV file after its header, sorted by id."""
    header, *rows = list(csv.reader(io.StringIO(data.decode(), newline="")))
    assert header == [c.strip() for c in COLUMNS.split(",")]
    return sorted(rows, key=lambda row: int(row[0]))


def contents(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.name.endswith(".gz") else raw


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


async def export(app: AppContext, **payload: Any) -> ExportResult:
    """The export run in-process without Redis: the coordinator writes every part itself."""
    from jobs.exports.job import export_dataset

    run = RunHandle(app=app, job_id=uuid.uuid4().hex, job_try=1)
    return await export_dataset.impl(run, ExportPayload.model_validate(payload))


@dataclass
class Writers:
    """Inserts and updates customers, one small transaction after another, until stopped."""

    engine: AsyncEngine
    commits: int = 0
    committed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stop: asyncio.Event) -> None:
        next_id = 1_000_000
        while not stop.is_set():
            await seed(self.engine, 20, start=next_id)
            next_id += 20
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(tables.customers)
                    .where(tables.customers.c.id % 97 == self.commits % 97)
                    .values(full_name=f"renamed {self.commits}", updated_at=func.now())
                )
            self.commits += 1
            self.committed.set()
            await asyncio.sleep(0.005)

    async def another_commit(self) -> None:
        seen = self.commits
        while self.commits <= seen + 1:
            self.committed.clear()
            await self.committed.wait()


@pytest.fixture
async def writers(engine: AsyncEngine, app: AppContext) -> AsyncIterator[Writers]:
    await seed(engine, 6_000)
    running = Writers(engine)
    stop = asyncio.Event()
    task = asyncio.create_task(running.run(stop))
    try:
        await running.another_commit()
        yield running
    finally:
        stop.set()
        await task


async def test_the_parts_hold_exactly_the_rows_of_one_export_of_the_same_snapshot(
    settings: Settings,
    redis: ArqRedis,
    app: AppContext,
    writers: Writers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four parts written by a worker's part jobs while writers insert and update: their union
    is, row for row, what one COPY of the whole table reads in the export's snapshot."""
    whole: dict[str, bytes] = {}
    real_enqueue = parallel._enqueue

    async def enqueue_then_copy_whole(run: Any, plan: parallel.Plan) -> None:
        await real_enqueue(run, plan)
        await writers.another_commit()  # the snapshot misses this commit and later ones
        conn = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                await conn.execute(f"set transaction snapshot '{plan.payloads[0].snapshot}'")
                await conn.execute("set local timezone = 'UTC'")
                chunks: list[bytes] = []

                async def keep(chunk: bytes) -> None:
                    chunks.append(chunk)

                await conn.copy_from_query(
                    f"select {COLUMNS} from customers", output=keep, format="csv", header=True
                )
                whole["csv"] = b"".join(chunks)
        finally:
            await conn.close()

    monkeypatch.setattr(parallel, "_enqueue", enqueue_then_copy_whole)
    async with running_worker(settings, redis, max_jobs=4):
        client = EtlClient.from_redis(redis, settings)
        handle = await client.export_dataset({"dataset": "customers", "parts": 4})
        result = await handle.result(timeout=60)
    await writers.another_commit()

    assert result.parts is not None and len(result.parts) == 4
    union = [row for p in result.parts for row in csv_rows(contents(Path(p.path)))]
    expected = csv_rows(whole["csv"])
    assert sorted(union, key=lambda row: int(row[0])) == expected
    assert len(union) == result.rows == len({row[0] for row in union})
    async with app.engine.connect() as conn:
        now = (await conn.execute(select(func.count()).select_from(tables.customers))).scalar()
    assert now is not None and now > len(expected)  # the writers did write during the export
    # Each part is its own key range, in order, every one holding rows.
    ranges = [[int(row[0]) for row in csv_rows(contents(Path(p.path)))] for p in result.parts]
    assert all(ranges) and all(a[-1] < b[0] for a, b in itertools.pairwise(ranges))
    # At least one part was written by a part job of the worker, not by the export itself.
    states = await read_states(
        redis, [f"{handle.job_id}:part-0{i}-of-04:try-1" for i in range(1, 5)],
        queue_name=settings.queue_name,
    )  # fmt: skip
    assert any(s.state == "complete" and s.result["ran"] for s in states)


async def test_the_manifest_lists_every_part_with_its_rows_bytes_and_sha256(
    app: AppContext, engine: AsyncEngine, settings: Settings
) -> None:
    await seed(engine, 900)
    result = await export(app, dataset="customers", format="jsonl", compress=True, parts=3)

    manifest_file = Path(result.path)
    assert manifest_file.name.endswith(".jsonl.gz.manifest.json")
    manifest_bytes = manifest_file.read_bytes()  # noqa: ASYNC240
    assert result.sha256 == hashlib.sha256(manifest_bytes).hexdigest()
    manifest = json.loads(manifest_bytes)
    directory = settings.export_dir / "customers"
    stem = manifest_file.name.removesuffix(".jsonl.gz.manifest.json")
    names = [f"{stem}.part-0{i}-of-03.jsonl.gz" for i in (1, 2, 3)]
    assert listing(directory) == sorted([manifest_file.name, *names])
    assert [p["file"] for p in manifest["parts"]] == names
    assert (manifest["file"], manifest["sha256"], manifest["key"]) == (None, None, "id")
    lines = []
    for entry, part in zip(manifest["parts"], result.parts or [], strict=True):
        raw = (directory / entry["file"]).read_bytes()
        data = gzip.decompress(raw).decode().splitlines()
        assert entry["rows"] == part.rows == len(data)
        assert entry["bytes"] == part.bytes == len(raw)
        assert entry["sha256"] == part.sha256 == hashlib.sha256(raw).hexdigest()
        ids = [json.loads(line)["id"] for line in data]
        assert entry["from"] is None or min(ids) >= entry["from"]
        assert entry["to"] is None or max(ids) < entry["to"]
        lines += data
    assert manifest["rows"] == result.rows == 900 == len(lines)
    assert manifest["bytes"] == result.bytes == sum(p["bytes"] for p in manifest["parts"])
    assert sorted(json.loads(line)["id"] for line in lines) == list(range(1, 901))
    # The three parts split 900 rows about evenly (a sample of the pages sets the boundaries).
    assert all(200 <= entry["rows"] <= 400 for entry in manifest["parts"])


async def test_a_failing_part_publishes_nothing_and_leaves_no_temp_file(
    settings: Settings, redis: ArqRedis, app: AppContext, engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    await seed(engine, 3_000)
    real_copy = part_module.copy_csv

    async def copy_or_fail(snap: Any, **kwargs: Any) -> int:
        if kwargs["key_range"].lower is not None and kwargs["key_range"].upper is not None:
            await kwargs["sink"](b"some bytes")  # the temp file exists when the part fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real_copy(snap, **kwargs)

    monkeypatch.setattr(part_module, "copy_csv", copy_or_fail)
    async with running_worker(settings, redis, max_jobs=3):
        client = EtlClient.from_redis(redis, settings)
        handle = await client.export_dataset({"dataset": "customers", "parts": 3})
        with pytest.raises(JobFailed) as failed:
            await handle.result(timeout=60)
    message = failed.value.message
    assert "\n" not in message
    assert message.startswith(
        "export failed while writing its parts; no file of this export was published: "
    )
    assert "part 2 of 3" in message and "No space left on device" in message
    assert listing(settings.export_dir / "customers") == []


async def test_one_worker_slot_writes_every_part_itself_without_waiting(
    settings: Settings, redis: ArqRedis, engine: AsyncEngine, app: AppContext
) -> None:
    """ETL_MAX_JOBS=1: the export holds the only slot, so it writes all three parts; the part
    jobs run after it and find their claims taken."""
    await seed(engine, 1_500)
    async with running_worker(settings, redis, max_jobs=1):
        client = EtlClient.from_redis(redis, settings)
        handle = await client.export_dataset({"dataset": "customers", "parts": 3})
        result = await handle.result(timeout=60)
        part_ids = [f"{handle.job_id}:part-0{i}-of-03:try-1" for i in (1, 2, 3)]
        async with asyncio.timeout(30):
            while True:
                states = await read_states(redis, part_ids, queue_name=settings.queue_name)
                if all(state.state == "complete" for state in states):
                    break
                await asyncio.sleep(0.05)
    assert result.rows == 1_500 and result.parts is not None and len(result.parts) == 3
    assert [state.result["ran"] for state in states] == [False, False, False]
    assert sum(p.rows for p in result.parts) == 1_500


async def test_a_part_whose_snapshot_is_gone_fails_in_one_line_and_leaves_nothing(
    app: AppContext, settings: Settings
) -> None:
    payload = ExportPartPayload(
        dataset="customers",
        format="csv",
        compress=False,
        snapshot="00000003-0000001B-1",
        part=2,
        parts=4,
        lower=10,
        upper=20,
        file="customers-20260101T000000.000Z-0badc0de.part-02-of-04.csv",
        export_job="abc",
    )
    run = RunHandle(app=app, job_id="abc:part-02-of-04:try-1", job_try=1)
    with pytest.raises(part_module.SnapshotGone) as gone:
        await export_part.impl(run, payload)
    assert gone.value.message == (
        "export part 2 of 4 (abc): snapshot 00000003-0000001B-1 no longer exists (its export "
        "ended or failed); nothing was written"
    )
    assert listing(settings.export_dir / "customers") == []


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"parts": 0}, "parts: Input should be greater than or equal to 1"),
        ({"parts": 17}, "parts: Input should be less than or equal to 16"),
        ({"parts": "2"}, "parts: Input should be a valid integer"),
        (
            {"parts": 2, "incremental": "daily"},
            "parts: cannot be combined with incremental: a feed's export is one "
            "file, published as its cursor advances; give parts or incremental, not both",
        ),
        (
            {"parts": 2, "format": "jsonl", "include": ["accounts"]},
            "parts: cannot be combined with include: nested exports are read in "
            "one session; drop include or parts",
        ),
    ],
)
def test_parts_refusals(payload: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidPayload) as refused:
        validate_payload(ExportPayload, (), {"dataset": "customers", **payload})
    assert refused.value.message == f"invalid payload: {message}"


def test_parts_stay_out_of_the_json_when_one_and_schedules_refuse_them() -> None:
    assert "parts" not in ExportPayload(dataset="customers").model_dump(mode="json")
    assert ExportPayload(dataset="customers", parts=3).model_dump(mode="json")["parts"] == 3
    with pytest.raises(ScheduleError) as refused:
        _payload("export_dataset", {"dataset": "customers", "parts": 2}, keep=None)
    assert str(refused.value) == (
        "args: parts: a scheduled export is written in one part; drop parts"
    )
