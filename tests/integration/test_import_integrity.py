"""Integrity of import_file: what it loads, counts and records is what the file said, once.

Last valid row per key wins (a property over random files, on MERGE and on ON CONFLICT); a job id
returns its recorded result only for the same import; rejects hold the bytes that were imported;
no file blocks the worker; a failing import uses bounded disk; the reject ratio is exact.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from arq.connections import ArqRedis
from arq.jobs import Job
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.errors import IdempotencyConflict, InputFileError, TooManyRejects
from jobs.imports import csvinput, merge
from jobs.imports import job as imports
from jobs.imports import rejects as reject_spool
from jobs.imports.cleanlines import CleanLines
from jobs.imports.csvinput import open_regular
from jobs.imports.job import import_file, import_id_for
from jobs.imports.rejects import RejectLog, kept_raw
from jobs.imports.spill import RecordSpill
from jobs.models import ImportFilePayload
from tests.support.import_files import (
    ACCOUNT_HEADER,
    CUSTOMER_HEADER,
    count,
    customer_line,
    rejects,
    rows,
    run_import,
    write,
)
from tests.support.worker_helpers import run_burst
from tests.unit.test_csv_cleanlines import (
    ACCOUNT_COLUMNS,
    CUSTOMER_COLUMNS,
    encode,
    messy_field,
    shuffled_case,
)
from tests.unit.test_csv_scan import messy_file, scanner
from worker.context import CTX_KEY, AppContext
from worker.runner import RunHandle
from worker.settings import Settings

CUSTOMERS = "select external_id, email, full_name, country, created_at from customers order by 1"
TABLES = ("customers", "accounts", "import_runs", "import_rejects")


def new_ctx(app: AppContext, job_id: str | None = None) -> dict[str, Any]:
    return {CTX_KEY: app, "job_id": job_id or f"test-{os.urandom(4).hex()}", "job_try": 1}


async def untracked(conn: Any) -> bool:
    return False


# 1. The last valid row per key wins: a property over random files, checked against a model.

Values = tuple[str, str, str, datetime | None]
"""email, full_name, country, created_at (None: the line left it empty) as stored."""

EMAILS = ("ann@example.com", "bob@example.com")
NAMES = ("Ann", "Bob", "Ritchie, Jr.")
COUNTRIES = ("GB", "DE")
STAMPS = (datetime(2020, 1, 1, tzinfo=UTC), datetime(2021, 6, 1, 12, tzinfo=UTC))
BROKEN = (
    lambda key: f"{key},not-an-email,Ann,GB,2020-01-01".encode(),
    lambda key: f"{key},ann@example.com,Ann,GBR,2020-01-01".encode(),
    lambda key: f"{key},ann@example.com,Ann,GB".encode(),
    lambda key: f"{key},ann@example.com,A\x00nn,GB,2020-01-01".encode(),
    lambda key: f"{key},ann@example.com,Zo".encode() + b"\xeb,GB,2020-01-01",
    lambda key: f"{key},ann@example.com,Ann,GB,2021-02-30".encode(),
)


def random_values(rng: random.Random, *, empty_created: bool = True) -> Values:
    created = None if empty_created and rng.random() < 0.2 else rng.choice(STAMPS)
    return (rng.choice(EMAILS), rng.choice(NAMES), rng.choice(COUNTRIES), created)


def line_for(rng: random.Random, key: str, values: Values) -> bytes:
    """`values` as a line, sometimes spelled so that only the rules (not the fast path) take it."""
    email, name, country, created = values
    if rng.random() < 0.3:
        email, country = f" {email.upper()} ", country.lower()
    quoted = f'"{name}"' if "," in name or rng.random() < 0.2 else name
    stamp = (
        "" if created is None else rng.choice([created.isoformat(), f"{created:%Y-%m-%d %H:%M}"])
    )
    return f"{key},{email},{quoted},{country},{stamp}".encode()


@dataclass
class Case:
    stored: dict[str, Values]
    lines: list[bytes]
    last: dict[str, Values]
    """Per key, the last valid row in the file."""
    rejected: int


def random_case(rng: random.Random) -> Case:
    """Repeated keys; rows that change a stored row, then set it back a few lines later; rows
    equal to the stored one; new keys; broken lines (None below)."""
    keys = [f"k{i:02d}" for i in range(rng.randint(3, 14))]
    stored = {k: random_values(rng, empty_created=False) for k in keys if rng.random() < 0.5}
    events: list[tuple[str, Values | None]] = []
    set_back: list[tuple[int, str]] = []
    for _ in range(rng.randint(1, 40)):
        key = rng.choice(keys)
        roll = rng.random()
        if roll < 0.15:
            events.append((key, None))
        elif roll < 0.35 and key in stored:
            events.append((key, random_values(rng)))
            set_back.append((rng.randint(len(events), len(events) + 4), key))
        elif roll < 0.5 and key in stored:
            events.append((key, stored[key]))
        else:
            events.append((key, random_values(rng)))
    for at, key in sorted(set_back, reverse=True):
        events.insert(at, (key, stored[key]))
    lines: list[bytes] = []
    last: dict[str, Values] = {}
    for key, values in events:
        if values is None:
            lines.append(rng.choice(BROKEN)(key))
        else:
            lines.append(line_for(rng, key, values))
            last[key] = values
    rejected = sum(values is None for _, values in events)
    return Case(stored=stored, lines=lines, last=last, rejected=rejected)


@dataclass
class Expected:
    table: dict[str, Values]
    inserted: int
    updated: int
    skipped: int


def model(case: Case, *, mode: str) -> Expected:
    """The last valid row per key wins: what the table must hold and how rows are counted."""
    table = dict(case.stored)
    inserted = updated = 0
    for key, (email, name, country, created) in case.last.items():
        if key not in case.stored:
            table[key] = (email, name, country, created)  # None: the import's now
            inserted += 1
        elif mode == "upsert":
            merged = (email, name, country, created or case.stored[key][3])
            if merged != case.stored[key]:
                table[key] = merged
                updated += 1
    valid = len(case.lines) - case.rejected
    return Expected(table, inserted, updated, valid - inserted - updated)


async def store(engine: AsyncEngine, stored: dict[str, Values]) -> dict[str, str]:
    """Empty the tables, store `stored`; the xmin of each stored row."""
    async with engine.begin() as conn:
        # DELETE, not TRUNCATE: a few rows, many times over.
        for table in ("customers", "import_rejects", "import_runs"):
            await conn.execute(text(f"delete from {table}"))
        if stored:
            await conn.execute(
                text(
                    "insert into customers (external_id, email, full_name, country, created_at)"
                    " values (:k, :e, :n, :c, :t)"
                ),
                [
                    {"k": key, "e": email, "n": name, "c": country, "t": created}
                    for key, (email, name, country, created) in stored.items()
                ],
            )
    return dict(await rows(engine, "select external_id, xmin::text from customers"))  # type: ignore[arg-type]


async def check_case(
    app: AppContext, settings: Settings, engine: AsyncEngine, case: Case, *, mode: str, seed: int
) -> None:
    before = await store(engine, case.stored)
    write(settings, "p.csv", CUSTOMER_HEADER, *case.lines)
    started = datetime.now(UTC) - timedelta(seconds=5)
    result = await run_import(new_ctx(app), path="p.csv", mode=mode, max_reject_ratio=1)
    want = model(case, mode=mode)
    where = f"seed {seed}, mode {mode}"
    got = (result["inserted"], result["updated"], result["skipped"], result["rejected"])
    assert got == (want.inserted, want.updated, want.skipped, case.rejected), where
    assert result["rows_read"] == sum(got) == len(case.lines), where
    table = {r[0]: r[1:] for r in await rows(engine, CUSTOMERS)}
    assert table.keys() == want.table.keys(), where
    for key, values in want.table.items():
        if values[3] is None:  # a new row without created_at: the import's now
            assert table[key][:3] == values[:3], (where, key)
            assert table[key][3] >= started, (where, key)
        else:
            assert table[key] == values, (where, key)
    # Rows the model leaves alone are not rewritten at all.
    after = dict(await rows(engine, "select external_id, xmin::text from customers"))
    rewritten = {k for k in before if after[k] != before[k]}
    changed = {k for k in case.stored if want.table[k] != case.stored[k]}
    assert rewritten == changed, where


SEEDS = range(40)


@pytest.mark.parametrize("way", ["merge", "on_conflict", "insert"])
async def test_the_last_valid_row_per_key_wins_on_random_files(
    app: AppContext,
    settings: Settings,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    way: str,
) -> None:
    if way == "on_conflict":
        monkeypatch.setattr(merge, "_counts_tracked", untracked)
    mode = "insert" if way == "insert" else "upsert"
    for seed in SEEDS:
        await check_case(
            app, settings, engine, random_case(random.Random(seed)), mode=mode, seed=seed
        )


@pytest.mark.parametrize("way", ["merge", "on_conflict"])
async def test_a_key_changed_then_set_back_to_its_stored_value_is_left_unchanged(
    app: AppContext,
    settings: Settings,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    way: str,
) -> None:
    if way == "on_conflict":
        monkeypatch.setattr(merge, "_counts_tracked", untracked)
    write(settings, "a.csv", CUSTOMER_HEADER, customer_line(1, full_name="A"))
    await run_import(new_ctx(app), path="a.csv")
    before = await rows(engine, "select *, xmin::text from customers")
    write(
        settings,
        "b.csv",
        CUSTOMER_HEADER,
        customer_line(1, full_name="B"),
        customer_line(2),
        customer_line(1, full_name="A"),
    )
    result = await run_import(new_ctx(app), path="b.csv")
    assert (result["inserted"], result["updated"], result["skipped"]) == (1, 0, 2)
    assert [r[2] for r in await rows(engine, CUSTOMERS)] == ["A", "Customer 2"]
    assert await rows(engine, "select *, xmin::text from customers where id = 1") == before


# 2. A recorded result only for the same import


async def test_the_same_job_id_and_file_returns_the_recorded_result_and_loads_nothing(
    app: AppContext, settings: Settings, engine: AsyncEngine
) -> None:
    write(settings, "c.csv", CUSTOMER_HEADER, customer_line(1), customer_line(2, email="bad"))
    ctx = new_ctx(app)
    first = await run_import(ctx, path="c.csv", max_reject_ratio=0.5)
    async with engine.begin() as conn:
        await conn.execute(text("delete from customers"))
    retry = await run_import({**ctx, "job_try": 2}, path="c.csv", max_reject_ratio=0.5)
    assert retry == first
    assert await count(engine, "customers") == 0  # not loaded again
    assert len(await rejects(engine)) == 1
    assert await count(engine, "import_runs") == 1


@pytest.mark.parametrize("change", ["content", "dataset", "mode"])
async def test_the_same_job_id_for_another_import_is_an_idempotency_conflict(
    app: AppContext, settings: Settings, engine: AsyncEngine, change: str
) -> None:
    path = write(settings, "c.csv", CUSTOMER_HEADER, customer_line(1), customer_line(2))
    ctx = new_ctx(app, job_id="nightly-customers")
    await run_import(ctx, path="c.csv", mode="upsert")
    snapshot = [await rows(engine, f"select * from {t} order by 1") for t in TABLES]
    first = hashlib.sha256(path.read_bytes()).hexdigest()
    retry: dict[str, Any] = {"path": "c.csv", "dataset": "customers", "mode": "upsert"}
    if change == "content":
        path = write(settings, "c.csv", CUSTOMER_HEADER, customer_line(1, full_name="Changed"))
    elif change == "dataset":
        path = write(settings, "a.csv", ACCOUNT_HEADER, b"1,c000001,EUR,100")
        retry.update(path="a.csv", dataset="accounts")
    else:
        retry["mode"] = "insert"
    second = hashlib.sha256(path.read_bytes()).hexdigest()
    [(finished,)] = await rows(engine, "select finished_at from import_runs")
    with pytest.raises(IdempotencyConflict) as caught:
        await run_import({**ctx, "job_try": 2}, **retry)
    assert str(caught.value) == (
        f"job id 'nightly-customers' was already used to import c.csv (dataset customers, mode "
        f"upsert, sha256 {first[:12]}\u2026) on {finished.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC; "
        f"this run asks for {retry['path']} (dataset {retry['dataset']}, mode {retry['mode']}, "
        f"sha256 {second[:12]}\u2026); use a new job id"
    )
    assert [await rows(engine, f"select * from {t} order by 1") for t in TABLES] == snapshot


# 5. Rejects are the bytes that were imported


async def test_rejects_found_after_copy_hold_the_imported_bytes_when_the_file_is_replaced(
    app: AppContext, settings: Settings, engine: AsyncEngine
) -> None:
    write(settings, "c.csv", CUSTOMER_HEADER, customer_line(1))
    await run_import(new_ctx(app), path="c.csv")
    imported = [
        b"1,c000001,EUR,100",
        b'2,"nobody\nat all",EUR,5',  # lines 3-4
        b"3,ghost,usd,0\r",  # line 5: checked by the rules, not the fast path
        b"4,c000001,USD,7",
        b"5,phantom,EUR,1",  # line 7
    ]
    path = write(settings, "a.csv", ACCOUNT_HEADER, *imported)
    original = path.read_bytes()
    replacement = ACCOUNT_HEADER + b"\n" + b"".join(b"%d,xx,EUR,%d\n" % (i, i) for i in range(9))
    swapped: list[bool] = []

    class Swapping(RunHandle):
        async def progress(self, **counters: int) -> None:
            if not swapped:  # the file is replaced by name once the import has read it
                (settings.import_dir / "new.csv").write_bytes(replacement)
                os.replace(settings.import_dir / "new.csv", path)
                swapped.append(True)

    run = Swapping(app=app, job_id="swapped", job_try=1)
    payload = ImportFilePayload(dataset="accounts", path="a.csv", max_reject_ratio=1)
    result = await import_file.impl(run, payload)
    assert swapped and path.read_bytes() == replacement
    assert (result.rows_read, result.inserted, result.rejected) == (5, 2, 3)
    reason = "customer_external_id: no row in customers has this external_id"
    assert await rejects(engine) == [
        (3, reason, '2,"nobody\nat all",EUR,5'),
        (5, reason, "3,ghost,usd,0"),
        (7, reason, "5,phantom,EUR,1"),
    ]
    assert await rows(engine, "select id, customer_external_id, balance_cents from accounts") == [
        (1, "c000001", 100),
        (4, "c000001", 7),
    ]
    assert await rows(engine, "select sha256 from import_runs where file = 'a.csv'") == [
        (hashlib.sha256(original).hexdigest(),)
    ]


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("read", [1, 7, 4096, 1 << 20])
def test_the_spill_gives_back_every_forwarded_record_as_written(fast: bool, read: int) -> None:
    """Whatever the blocks and whichever way a line went, record n's bytes are its lines."""
    data = messy_file(random.Random(read), 300)
    s = scanner(fast=fast, keep_raw=True)
    with RecordSpill() as spill:
        for start in range(0, len(data), read):
            spill.add(s.feed(data[start : start + read]).raw)
        spill.add(s.finish().raw)
        got = spill.fetch(range(1, s.forwarded + 1))
    lines = data.split(b"\n")
    expected = {}
    for rec in range(1, s.forwarded + 1):
        line, span = s.line_of(rec)
        expected[rec] = b"\n".join(lines[line - 2 : line - 2 + span]).removesuffix(b"\r")
    assert s.forwarded > 100
    assert got == expected


# 6. Nothing blocks the event loop


@pytest.fixture
def fifo(settings: Settings) -> Iterator[Path]:
    """A FIFO in the import dir; if something opens it for reading and waits, a writer comes
    after 5 s and goes at once, so a test of blocking code fails instead of hanging."""
    path = settings.import_dir / "pipe.csv"
    os.mkfifo(path)
    stop = threading.Event()

    def rescue() -> None:
        if stop.wait(5):
            return
        while not stop.is_set():
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader yet
                time.sleep(0.05)

    thread = threading.Thread(target=rescue, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join()


async def test_a_fifo_in_the_import_dir_fails_at_once_and_the_worker_keeps_running(
    settings: Settings, redis: ArqRedis, engine: AsyncEngine, clean_db: None, fifo: Path
) -> None:
    queue = settings.queue_name
    job = await redis.enqueue_job(
        "import_file", dataset="customers", path="pipe.csv", _queue_name=queue
    )
    ping = await redis.enqueue_job("ping", _queue_name=queue)
    assert job is not None and ping is not None
    started = time.monotonic()
    worker = await run_burst(settings, redis)
    assert time.monotonic() - started < 4
    assert (worker.jobs_failed, worker.jobs_complete) == (1, 1)
    info = await Job(
        job.job_id, redis, _queue_name=queue, _deserializer=redis.job_deserializer
    ).result_info()
    assert info is not None and info.success is False
    assert getattr(info.result, "message", None) == "pipe.csv: not a regular file (a FIFO)"
    assert await ping.result(timeout=5) == {"pong": True, "database": True}


def make_device(path: Path) -> None:
    """A node like /dev/zero: reading it never ends."""
    try:
        os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("cannot create a device node here")


@pytest.mark.parametrize(
    ("make", "path", "shown", "kind"),
    [
        (lambda d: (d / "folder.csv").mkdir(), "folder.csv", "folder.csv", "a directory"),
        (lambda d: make_device(d / "zero.csv"), "zero.csv", "zero.csv", "a character device"),
        (
            # Named by where the link leads (resolved, so that it stays inside the directory).
            lambda d: (make_device(d / "zero"), (d / "link.csv").symlink_to(d / "zero")),
            "link.csv",
            "zero",
            "a character device",
        ),
    ],
)
async def test_files_that_are_not_regular_are_refused_before_they_are_opened(
    ctx: dict[str, Any],
    settings: Settings,
    engine: AsyncEngine,
    make: Any,
    path: str,
    shown: str,
    kind: str,
) -> None:
    make(settings.import_dir)
    with pytest.raises(InputFileError) as caught:
        await run_import(ctx, path=path)
    assert str(caught.value) == f"{shown}: not a regular file ({kind})"
    for table in TABLES:
        assert await count(engine, table) == 0


def test_a_name_swapped_for_a_fifo_after_the_check_is_not_waited_on(
    fifo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stat() said regular file, then the name became a FIFO: the open still returns at once."""
    regular = fifo.with_name("regular.csv")
    regular.write_bytes(b"x")
    real_stat = os.stat

    def swapped(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        return real_stat(regular if Path(path) == fifo else path, *args, **kwargs)

    monkeypatch.setattr(csvinput.os, "stat", swapped)
    started = time.monotonic()
    with pytest.raises(InputFileError, match=r"^pipe\.csv: not a regular file \(a FIFO\)$"):
        open_regular(fifo, name="pipe.csv")
    assert time.monotonic() - started < 1


# 9. A failing import uses bounded disk


class Watched(RejectLog):
    """Records every log and the most its spool ever held."""

    logs: ClassVar[list[Watched]] = []

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.peak = 0
        Watched.logs.append(self)

    def add(self, rejects: Any) -> None:
        super().add(rejects)
        self.peak = max(self.peak, self._spool.tell())


@pytest.mark.parametrize("mode", ["insert", "upsert"])
async def test_a_gzip_of_long_nul_lines_fails_early_in_bounded_space(
    ctx: dict[str, Any],
    settings: Settings,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    cap = 200_000
    monkeypatch.setattr(reject_spool, "MAX_REJECT_SPOOL_BYTES", cap)
    monkeypatch.setattr(imports, "RejectLog", Watched)
    Watched.logs = []
    line = b"\x00" * 60_000
    # gzip members one after another read as one stream: 4000 lines, compressed quickly.
    data = gzip.compress(CUSTOMER_HEADER + b"\n") + gzip.compress((line + b"\n") * 100, 9) * 40
    (settings.import_dir / "nul.csv.gz").write_bytes(data)
    assert len(data) < 300_000  # 240 MB once decompressed
    import_id = import_id_for(ctx["job_id"])
    started = time.monotonic()
    with pytest.raises(TooManyRejects) as caught:
        await run_import(ctx, path="nul.csv.gz", mode=mode)
    assert time.monotonic() - started < 10  # it stopped reading: not all 240 MB were scanned
    [log] = Watched.logs
    assert 0 < log.bytes <= cap and log.peak == log.bytes and log.full
    # Each reject: a 4096-byte start of its line, every NUL shown as \x00 (16 KiB of text).
    assert log.count == 12 and log.bytes > cap - 17_000
    read = int(str(caught.value).split(" rows fill")[0].rsplit(" ", 1)[1])
    assert 13 <= read <= 20  # the scan stopped within the block that filled the spool
    assert str(caught.value) == (
        f"nul.csv.gz: 12 rejects in the first {read} rows fill the {cap} bytes kept for "
        f"one import's rejects; nothing was loaded. line 2: holds a NUL byte; line 3: holds a NUL "
        f"byte; line 4: holds a NUL byte; line 5: holds a NUL byte; line 6: holds a NUL byte; and "
        f"7 more. The first 12 are in import_rejects under import_id {import_id}"
    )
    assert await count(engine, "customers") == 0
    assert await count(engine, "import_runs") == 0
    kept = await rejects(engine)
    assert [r[:2] for r in kept] == [
        (n, "holds a NUL byte (line of 60000 bytes, first 4096 kept)") for n in range(2, 14)
    ]
    assert {r[2] for r in kept} == {"\\x00" * 4096}


def test_a_long_line_is_cut_between_characters() -> None:
    assert kept_raw(b"x" * 4096) == (b"x" * 4096, "")
    assert kept_raw(b"x" * 4097) == (b"x" * 4096, " (line of 4097 bytes, first 4096 kept)")
    # "é" is two bytes; one would straddle the cut at 4096.
    raw = b"x" * 4095 + "é".encode() * 10
    assert kept_raw(raw) == (b"x" * 4095, " (line of 4115 bytes, first 4095 kept)")


# The reject ratio, compared exactly


@pytest.mark.parametrize(("bad", "fails"), [(29, False), (30, True)])
async def test_the_reject_ratio_is_compared_exactly(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine, bad: int, fails: bool
) -> None:
    lines = [
        customer_line(i, email="broken" if i < bad else f"u{i}@example.com") for i in range(100)
    ]
    write(settings, "c.csv", CUSTOMER_HEADER, *lines)
    if not fails:
        result = await run_import(ctx, path="c.csv", max_reject_ratio=0.29)
        assert (result["rows_read"], result["inserted"], result["rejected"]) == (100, 71, 29)
        assert await count(engine, "customers") == 71
        return
    with pytest.raises(TooManyRejects) as caught:
        await run_import(ctx, path="c.csv", max_reject_ratio=0.29)
    assert str(caught.value).startswith(
        "c.csv: 30 of 100 rows rejected (30.0%), more than max_reject_ratio=0.29 allows; "
        "nothing was loaded. line 2: email: must hold exactly one @ with a name before it;"
    )
    assert await count(engine, "customers") == 0


# Lines the fast path writes out again (trimmed, case-mapped) store what the rules store


def fuzzed_lines(rng: random.Random, columns: tuple[str, ...], n: int, key: str) -> list[bytes]:
    """Lines from the unit fuzzer's messy fields; column `key` unique per line (k00000, ...),
    though in any case and padded, so insert mode can COPY straight into the table."""
    lines = []
    for i in range(n):
        fields = [messy_field(rng, c) for c in columns]
        fields[columns.index(key)] = (
            rng.choice(["", " ", "  "]) + shuffled_case(rng, f"k{i:05d}") + rng.choice(["", " "])
        )
        lines.append(",".join(encode(rng, f) for f in fields).encode("utf-8", "surrogatepass"))
    return lines


async def fast_and_slow(
    app: AppContext,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    *,
    seed: str | None,
    path: str,
    dataset: str,
    mode: str,
    table: str,
) -> list[Any]:
    outcomes = []
    for fast in (True, False):
        monkeypatch.setattr(imports, "FAST_PATH", fast)
        async with engine.begin() as conn:
            await conn.execute(text("truncate customers, import_rejects, import_runs cascade"))
        if seed is not None:
            await run_import(new_ctx(app), path=seed, mode="insert")
        result = await run_import(
            new_ctx(app), path=path, dataset=dataset, mode=mode, max_reject_ratio=1
        )
        outcomes.append(
            (
                {k: v for k, v in result.items() if k != "import_id"},
                await rows(engine, table),
                await rejects(engine),
            )
        )
    return outcomes


@pytest.mark.parametrize("mode", ["insert", "upsert"])
async def test_customers_the_fast_path_rewrites_store_what_the_rules_store(
    app: AppContext,
    settings: Settings,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    lines = fuzzed_lines(random.Random(20261125), CUSTOMER_COLUMNS, 4000, key="external_id")
    clean = CleanLines("customers", CUSTOMER_COLUMNS, may_be_empty=frozenset())
    rewritten = [w for w in map(clean.normalised_line, lines) if w is not None and w not in lines]
    assert len(rewritten) > 300
    write(settings, "fuzz.csv", CUSTOMER_HEADER, *lines, end=b"\r\n")
    # created_at: NULL where the import's now filled it in (a new row without one).
    table = (
        "select c.external_id, c.email, c.full_name, c.country, "
        "nullif(c.created_at, r.finished_at) from customers c, import_runs r "
        "where r.file = 'fuzz.csv' order by 1"
    )
    outcomes = await fast_and_slow(
        app, engine, monkeypatch, seed=None, path="fuzz.csv", dataset="customers", mode=mode,
        table=table,
    )  # fmt: skip
    assert outcomes[0] == outcomes[1]
    result, stored, refused = outcomes[0]
    assert result["inserted"] == len(stored) > 500
    assert len(refused) > 500


async def test_accounts_the_fast_path_rewrites_store_what_the_rules_store(
    app: AppContext,
    settings: Settings,
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The staged way, where SQL rejects accounts naming no customer after COPY, and their raw
    lines come from the record spill: rewritten runs of lines must be kept as written too."""
    rng = random.Random(7)
    write(settings, "owners.csv", CUSTOMER_HEADER, *(customer_line(i) for i in range(0, 50)))
    lines = fuzzed_lines(rng, ACCOUNT_COLUMNS, 3000, key="id")
    owners = ["c000001", "C000002", " c000003 ", "nobody", ""]
    lines = [
        line.replace(b"k", b"1", 1) if rng.random() < 0.5 else line  # ids: some numbers
        for line in lines
    ]
    lines += [
        f"{9000 + i}, {rng.choice(owners)} ,{rng.choice(['eur', 'EUR', ' Usd'])},{i}".encode()
        for i in range(2000)
    ]
    clean = CleanLines("accounts", ACCOUNT_COLUMNS, may_be_empty=frozenset())
    rewritten = [w for w in map(clean.normalised_line, lines) if w is not None and w not in lines]
    assert len(rewritten) > 1000
    write(settings, "accounts.csv", ACCOUNT_HEADER, *lines)
    table = "select id, customer_external_id, currency, balance_cents from accounts order by id"
    outcomes = await fast_and_slow(
        app, engine, monkeypatch, seed="owners.csv", path="accounts.csv", dataset="accounts",
        mode="upsert", table=table,
    )  # fmt: skip
    assert outcomes[0] == outcomes[1]
    result, stored, refused = outcomes[0]
    assert result["rows_read"] == len(lines)
    assert len(stored) > 500
    reason = "customer_external_id: no row in customers has this external_id"
    assert sum(r[1] == reason for r in refused) > 300
