"""Imports from and exports to an S3 bucket (a local moto server, started once per session).

The import dir and the export dir are `s3://` prefixes: an import streams its object into COPY,
an export streams into a multipart upload that completes only when the export does, then its
manifest. Each failure says what went wrong in one line, without a secret.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.moto import LocalS3, local_s3
from bench.moto import s3_settings as local_s3_settings
from jobs.errors import ConfigError, InputFileError, PathNotAllowed
from jobs.exports.job import export_dataset
from jobs.exports.nightly import nightly_export
from jobs.exports.objects import PART_BYTES, PARTS_IN_FLIGHT
from jobs.imports import objects
from jobs.imports.job import import_file
from jobs.models import ExportPayload
from tests.support.import_files import CUSTOMER_HEADER, count, customer_line, rows
from worker.context import CTX_KEY, AppContext
from worker.db import create_engine, create_sessionmaker
from worker.runner import RunHandle, execute
from worker.settings import Settings

pytest.importorskip("obstore")
pytest.importorskip("moto")

ROOT = Path(__file__).resolve().parents[2]
WRONG_SECRET = "wr0ng-Secret-Do-Not-Show"


@pytest.fixture(scope="session")
def s3() -> Iterator[LocalS3]:
    with local_s3() as server:
        yield server


@pytest.fixture
def bucket(s3: LocalS3) -> str:
    name = f"etl-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=name)
    return name


def s3_settings(settings: Settings, s3: LocalS3, bucket: str, **changes: Any) -> Settings:
    return local_s3_settings(settings, s3, bucket).model_copy(update=changes)


@pytest.fixture
def s3_app(settings: Settings, s3: LocalS3, bucket: str, app: AppContext) -> AppContext:
    return AppContext(
        settings=s3_settings(settings, s3, bucket), engine=app.engine, sessionmaker=app.sessionmaker
    )


def ctx_of(app: AppContext) -> dict[str, Any]:
    return {CTX_KEY: app, "job_id": f"test-{uuid.uuid4().hex[:8]}", "job_try": 1}


def put(s3: LocalS3, bucket: str, key: str, data: bytes) -> None:
    s3.client().put_object(Bucket=bucket, Key=key, Body=data)


def customers_file(first: int, last: int, *, name_prefix: str = "Customer") -> bytes:
    lines = [CUSTOMER_HEADER]
    lines += [customer_line(i, full_name=f"{name_prefix} {i}") for i in range(first, last + 1)]
    return b"\n".join(lines) + b"\n"


def keys(s3: LocalS3, bucket: str, prefix: str = "") -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message, message
    return message


# imports


async def test_an_import_streams_a_gzipped_object_into_the_table(
    s3_app: AppContext, s3: LocalS3, bucket: str, engine: AsyncEngine
) -> None:
    data = gzip.compress(customers_file(1, 500))
    put(s3, bucket, "inbox/daily/customers.csv.gz", data)
    result = await execute(
        import_file, ctx_of(s3_app), dataset="customers", path="daily/customers.csv.gz"
    )
    assert (result["rows_read"], result["inserted"], result["rejected"]) == (500, 500, 0)
    assert await count(engine, "customers") == 500
    ((file, sha256),) = await rows(engine, "select file, sha256 from import_runs")
    assert (file, sha256) == ("daily/customers.csv.gz", hashlib.sha256(data).hexdigest())


async def test_a_missing_object_fails_in_one_line_naming_its_key(
    s3_app: AppContext, bucket: str, engine: AsyncEngine
) -> None:
    with pytest.raises(InputFileError) as caught:
        await execute(import_file, ctx_of(s3_app), dataset="customers", path="nope/missing.csv")
    assert one_line(caught.value) == (
        f"nope/missing.csv: no such object s3://{bucket}/inbox/nope/missing.csv"
    )
    assert await count(engine, "import_runs") == 0


async def test_an_unknown_bucket_fails_in_one_line(
    settings: Settings, s3: LocalS3, app: AppContext
) -> None:
    wrong = AppContext(
        settings=s3_settings(settings, s3, "no-such-bucket-here"),
        engine=app.engine,
        sessionmaker=app.sessionmaker,
    )
    with pytest.raises(ConfigError) as caught:
        await execute(import_file, ctx_of(wrong), dataset="customers", path="customers.csv")
    assert one_line(caught.value) == (
        f"bucket 'no-such-bucket-here' does not exist at {s3.endpoint} (ETL_IMPORT_DIR); "
        "create it or correct the setting"
    )
    with pytest.raises(ConfigError) as caught:
        await execute(export_dataset, ctx_of(wrong), dataset="customers")
    assert one_line(caught.value) == (
        f"bucket 'no-such-bucket-here' does not exist at {s3.endpoint} (ETL_EXPORT_DIR); "
        "create it or correct the setting"
    )


async def test_wrong_credentials_fail_in_one_line_without_the_secret(
    settings: Settings, s3: LocalS3, bucket: str, app: AppContext, engine: AsyncEngine
) -> None:
    put(s3, bucket, "inbox/customers.csv", customers_file(1, 10))
    wrong = AppContext(
        settings=s3_settings(settings, s3, bucket, aws_secret_access_key=SecretStr(WRONG_SECRET)),
        engine=app.engine,
        sessionmaker=app.sessionmaker,
    )
    expected = (
        f"{s3.endpoint} refused the credentials for s3://{bucket} (SignatureDoesNotMatch); "
        "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN"
    )
    with pytest.raises(ConfigError) as caught:
        await execute(import_file, ctx_of(wrong), dataset="customers", path="customers.csv")
    assert one_line(caught.value) == expected
    with pytest.raises(ConfigError) as caught:
        await execute(export_dataset, ctx_of(wrong), dataset="customers")
    assert one_line(caught.value) == expected
    for shown in (str(caught.value), repr(caught.value), repr(wrong.settings)):
        assert WRONG_SECRET not in shown and s3.secret_access_key not in shown
    assert repr(wrong.job_config).count("secret") == 0
    assert await count(engine, "customers") == 0
    assert keys(s3, bucket, "exports/") == []


@pytest.mark.parametrize(
    "path",
    [
        "../other/customers.csv",
        "a/../../customers.csv",
        "./customers.csv",
        "a//customers.csv",
        "/inbox/customers.csv",
        "s3://other-bucket/inbox/customers.csv",
        "https://example.com/customers.csv",
    ],
)
async def test_keys_outside_the_prefix_are_refused(
    s3_app: AppContext, bucket: str, path: str
) -> None:
    with pytest.raises(PathNotAllowed) as caught:
        await execute(import_file, ctx_of(s3_app), dataset="customers", path=path)
    assert one_line(caught.value) == (
        f"path {path!r} is outside 's3://{bucket}/inbox'; give a key relative to it "
        "(no '..', '.' or empty segments)"
    )


async def test_the_prefix_s_own_url_is_accepted(
    s3_app: AppContext, s3: LocalS3, bucket: str, engine: AsyncEngine
) -> None:
    put(s3, bucket, "inbox/customers.csv", customers_file(1, 3))
    path = f"s3://{bucket}/inbox/customers.csv"
    result = await execute(import_file, ctx_of(s3_app), dataset="customers", path=path)
    assert result["inserted"] == 3


async def test_an_object_replaced_after_its_header_was_read_fails_the_import(
    s3_app: AppContext, s3: LocalS3, bucket: str, engine: AsyncEngine, monkeypatch: Any
) -> None:
    """The header's read fixed the version; the rows' read asks for it (If-Match) and fails."""
    put(s3, bucket, "inbox/customers.csv", customers_file(1, 100))
    opened = objects.ObjectSource.open

    def open_replacing(self: objects.ObjectSource) -> objects.ObjectReader:
        if self.etag is not None:  # the second read: the object is replaced just before it
            put(s3, bucket, "inbox/customers.csv", customers_file(1, 100, name_prefix="New"))
        return opened(self)

    monkeypatch.setattr(objects.ObjectSource, "open", open_replacing)
    with pytest.raises(InputFileError) as caught:
        await execute(import_file, ctx_of(s3_app), dataset="customers", path="customers.csv")
    assert one_line(caught.value) == (
        "customers.csv: the object was replaced while it was being read (its ETag changed); "
        "nothing was loaded, run the job again"
    )
    assert await count(engine, "customers") == 0
    assert await count(engine, "import_runs") == 0


async def test_an_object_replaced_while_its_rows_stream_loads_the_version_read(
    s3_app: AppContext, s3: LocalS3, bucket: str, engine: AsyncEngine, monkeypatch: Any
) -> None:
    """One GET serves one version: the rows loaded and the digest recorded are both the old
    object's, though a new one was written under the key halfway through."""
    old = customers_file(1, 20_000)  # several blocks
    new = customers_file(1, 20_000, name_prefix="Replaced")
    assert len(old) > 4 * objects.READ_BYTES
    put(s3, bucket, "inbox/customers.csv", old)
    read = objects.ObjectReader.read
    replaced: list[int] = []

    def read_replacing(self: objects.ObjectReader, size: int = -1, /) -> bytes:
        data = read(self, size)
        if self._source.etag is not None and data and not replaced and self is not first[0]:
            put(s3, bucket, "inbox/customers.csv", new)
            replaced.append(len(data))
        return data

    first: list[objects.ObjectReader | None] = [None]
    opened = objects.ObjectSource.open

    def open_noting(self: objects.ObjectSource) -> objects.ObjectReader:
        reader = opened(self)
        if first[0] is None:
            first[0] = reader  # the header's read: leave it alone
        return reader

    monkeypatch.setattr(objects.ObjectSource, "open", open_noting)
    monkeypatch.setattr(objects.ObjectReader, "read", read_replacing)
    result = await execute(import_file, ctx_of(s3_app), dataset="customers", path="customers.csv")
    assert replaced, "the object was never replaced mid-read"
    assert (
        hashlib.sha256(
            s3.client().get_object(Bucket=bucket, Key="inbox/customers.csv")["Body"].read()
        ).hexdigest()
        == hashlib.sha256(new).hexdigest()
    )
    assert result["inserted"] == 20_000
    names = await rows(engine, "select count(*) from customers where full_name like 'Customer %'")
    assert names == [(20_000,)]
    ((sha256,),) = await rows(engine, "select sha256 from import_runs")
    assert sha256 == hashlib.sha256(old).hexdigest()


# exports


async def add_customers(engine: AsyncEngine, *, first: int, last: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "insert into customers (external_id, email, full_name, country, created_at)"
                " select 'C' || g, 'user' || g || '@example.com', 'Customer Number ' || g, 'US',"
                " now() from generate_series(cast(:first as bigint), cast(:last as bigint)) g"
            ),
            {"first": first, "last": last},
        )


def body(s3: LocalS3, bucket: str, key: str) -> bytes:
    data: bytes = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def multipart_uploads(s3: LocalS3, bucket: str) -> list[str]:
    listed = s3.client().list_multipart_uploads(Bucket=bucket)
    return [upload["Key"] for upload in listed.get("Uploads", [])]


async def test_an_export_becomes_an_object_then_its_manifest(
    s3_app: AppContext, s3: LocalS3, bucket: str, engine: AsyncEngine
) -> None:
    await add_customers(engine, first=1, last=1000)
    result = await execute(export_dataset, ctx_of(s3_app), dataset="customers", compress=True)
    name = result["path"].rpartition("/")[2]
    assert result["path"] == f"s3://{bucket}/exports/customers/{name}"
    key = f"exports/customers/{name}"
    assert keys(s3, bucket) == [key, key + ".manifest.json"]
    data = body(s3, bucket, key)
    manifest = json.loads(body(s3, bucket, key + ".manifest.json"))
    assert (manifest["rows"], manifest["bytes"], manifest["sha256"], manifest["file"]) == (
        1000,
        len(data),
        hashlib.sha256(data).hexdigest(),
        name,
    )
    assert (result["rows"], result["bytes"], result["sha256"]) == (
        1000,
        len(data),
        manifest["sha256"],
    )
    assert len(gzip.decompress(data).splitlines()) == 1001
    assert multipart_uploads(s3, bucket) == []


async def test_a_failed_export_leaves_no_object_no_manifest_and_no_upload(
    s3_app: AppContext, s3: LocalS3, bucket: str, engine: AsyncEngine
) -> None:
    """The export fails after several parts were uploaded: the upload is aborted."""
    await add_customers(engine, first=1, last=300_000)  # ~20 MB of CSV: parts of 8 MiB
    seen: list[list[str]] = []

    class Failing(RunHandle):
        async def progress(self, **counters: int) -> None:
            if counters.get("rows", 0) > 250_000:
                seen.append(multipart_uploads(s3, bucket))
                raise RuntimeError("the database went away mid-export")

    run = Failing(app=s3_app, job_id=uuid.uuid4().hex, job_try=1)
    with pytest.raises(RuntimeError, match="went away"):
        await export_dataset.impl(run, ExportPayload(dataset="customers"))
    assert seen and len(seen[0]) == 1, "no multipart upload was under way when it failed"
    assert keys(s3, bucket) == []
    assert multipart_uploads(s3, bucket) == []


async def test_the_nightly_export_keeps_the_newest_objects_in_the_bucket(
    s3_app: AppContext, s3: LocalS3, bucket: str, engine: AsyncEngine
) -> None:
    await add_customers(engine, first=1, last=10)
    app = AppContext(
        settings=s3_app.settings.model_copy(update={"export_keep": 1}),
        engine=s3_app.engine,
        sessionmaker=s3_app.sessionmaker,
    )
    first = await execute(nightly_export, ctx_of(app))
    await asyncio.sleep(0.01)  # names carry the time to the millisecond
    second = await execute(nightly_export, ctx_of(app))
    assert sorted(first["deleted"]) == []
    assert sorted(second["deleted"]) == sorted(e["path"] for e in first["exports"])
    kept = [e["path"].removeprefix(f"s3://{bucket}/") for e in second["exports"]]
    assert keys(s3, bucket) == sorted([*kept, *(k + ".manifest.json" for k in kept)])


# A million rows there and back, and the memory it takes, in a child process of its own.

N = 200_000
LARGE = 1_000_000
GROWTH = 1.2  # what a job adds to RSS at LARGE may exceed what it adds at N by 20%...
SLACK_MB = 4.0  # ...plus a few MB of allocator noise
# An export holds at most PARTS_IN_FLIGHT + 1 parts. At N rows fewer may happen to be in flight
# at once (moto's pace decides), so the plain export may add one part more at LARGE; a gzipped
# export of N rows is a single part, so only its ceiling is checked.
PART_MB = PART_BYTES / 2**20
ADDED_CEILING_MB = (PARTS_IN_FLIGHT + 1) * PART_MB + 24


def gzipped_customers(rows: int) -> bytes:
    lines = [CUSTOMER_HEADER, *(customer_line(i) for i in range(1, rows + 1))]
    return gzip.compress(b"\n".join(lines) + b"\n", compresslevel=1)


JOBS = ("import", "export", "plain_export")  # each in a process of its own, in this order


async def in_child(database_url: str, env: dict[str, str], *, job: str, path: str) -> Any:
    """One job in a child process: its result, seconds, and RSS before it and at its peak.

    glibc gives each thread that allocates its own malloc arena; with the read-ahead and writer
    threads, a peak varied by 10 MB from run to run. Two arenas make the peaks repeatable (they
    stayed within 1.5 MB) without hiding what a job holds."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.test_object_storage",
        json.dumps({"database_url": database_url, "env": env, "job": job, "path": path}),
        cwd=ROOT,
        env={**os.environ, "MALLOC_ARENA_MAX": "2"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


@pytest.fixture(scope="module")
async def round_trips(
    s3: LocalS3, engine: AsyncEngine, database_url: str
) -> dict[int, dict[str, Any]]:
    """For N and LARGE rows: a gzipped object imported into an empty customers table, then
    exported back, each job in a child process that reports its peak RSS."""
    bucket = f"etl-rt-{uuid.uuid4().hex[:8]}"
    client = s3.client()
    client.create_bucket(Bucket=bucket)
    reports: dict[int, dict[str, Any]] = {}
    for size in (N, LARGE):
        async with engine.begin() as conn:
            await conn.execute(text("truncate customers, import_runs, import_rejects cascade"))
        data = await asyncio.to_thread(gzipped_customers, size)
        key = f"inbox/customers-{size}.csv.gz"
        await asyncio.to_thread(client.put_object, Bucket=bucket, Key=key, Body=data)
        env = {
            **s3.env(),
            "ETL_IMPORT_DIR": f"s3://{bucket}/inbox",
            "ETL_EXPORT_DIR": f"s3://{bucket}/exports",
        }
        report: dict[str, Any] = {}
        for job in JOBS:
            report |= await in_child(database_url, env, job=job, path=key.removeprefix("inbox/"))
        report["uploaded_sha256"] = hashlib.sha256(data).hexdigest()
        report["table_rows"] = await count(engine, "customers")
        report["recorded"] = await rows(engine, "select file, sha256, rows_read from import_runs")
        export_key = report["export"]["path"].removeprefix(f"s3://{bucket}/")
        exported = await asyncio.to_thread(body, s3, bucket, export_key)
        report["exported_sha256"] = hashlib.sha256(exported).hexdigest()
        report["exported_bytes"] = len(exported)
        report["exported_lines"] = gzip.decompress(exported).count(b"\n")
        report["manifest"] = json.loads(
            await asyncio.to_thread(body, s3, bucket, export_key + ".manifest.json")
        )
        report["uploads_left"] = multipart_uploads(s3, bucket)
        reports[size] = report
    async with engine.begin() as conn:
        await conn.execute(text("truncate customers, import_runs, import_rejects cascade"))
    return reports


@pytest.mark.timeout(600)
async def test_a_million_rows_go_from_a_bucket_to_the_table_and_back(
    round_trips: dict[int, dict[str, Any]],
) -> None:
    report = round_trips[LARGE]
    imported, exported = report["import"], report["export"]
    assert (imported["rows_read"], imported["inserted"], imported["rejected"]) == (LARGE, LARGE, 0)
    assert report["table_rows"] == LARGE
    assert report["recorded"] == [(f"customers-{LARGE}.csv.gz", report["uploaded_sha256"], LARGE)]
    manifest = report["manifest"]
    assert exported["rows"] == manifest["rows"] == LARGE
    assert report["exported_lines"] == LARGE + 1  # and the header
    assert exported["sha256"] == manifest["sha256"] == report["exported_sha256"]
    assert exported["bytes"] == manifest["bytes"] == report["exported_bytes"]
    assert report["uploads_left"] == []


@pytest.mark.timeout(600)
async def test_peak_memory_does_not_grow_with_the_object(
    round_trips: dict[int, dict[str, Any]],
) -> None:
    small, large = round_trips[N], round_trips[LARGE]
    assert small["plain_export"]["bytes"] > 2 * PART_BYTES  # parts in flight, as at LARGE
    for job in ("import", "plain_export", "export"):
        small_added = small[f"{job}_peak_mb"] - small[f"{job}_base_mb"]
        large_added = large[f"{job}_peak_mb"] - large[f"{job}_base_mb"]
        summary = (
            f"{job} via S3: peak RSS {small[f'{job}_peak_mb']:.1f} MB at {N:,} rows"
            f" (+{small_added:.1f} MB, {small[f'{job}_seconds']:.2f} s),"
            f" {large[f'{job}_peak_mb']:.1f} MB at {LARGE:,} rows"
            f" (+{large_added:.1f} MB, {large[f'{job}_seconds']:.2f} s)"
        )
        print(summary)
        if job == "import":
            assert large_added <= small_added * GROWTH + SLACK_MB, summary
        elif job == "plain_export":
            assert large_added <= small_added * GROWTH + SLACK_MB + PART_MB, summary
        assert large_added < ADDED_CEILING_MB, summary


def _status_mb(field: str) -> float:
    status = Path("/proc/self/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith(field + ":")]
    return int(line.split()[1]) / 1024  # kB


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


async def _child(database_url: str, env: dict[str, str], *, job: str, path: str) -> dict[str, Any]:
    from jobs.exports import objects as export_objects  # noqa: F401 (loaded before the baseline)
    from jobs.models import ImportFilePayload
    from worker.logging import configure_logging

    configure_logging("WARNING", "json")
    settings = Settings(_env_file=None, DATABASE_URL=database_url, **env)  # type: ignore[call-arg]
    engine = create_engine(settings)
    report: dict[str, Any] = {}
    try:
        async with engine.connect() as conn:
            await conn.execute(text("select 1"))
        app = AppContext(settings=settings, engine=engine, sessionmaker=create_sessionmaker(engine))
        run = RunHandle(app=app, job_id=uuid.uuid4().hex, job_try=1)
        payload = ImportFilePayload(dataset="customers", path=path, mode="insert")
        calls = {
            "import": lambda: import_file.impl(run, payload),
            "export": lambda: export_dataset.impl(
                run, ExportPayload(dataset="customers", compress=True)
            ),
            "plain_export": lambda: export_dataset.impl(run, ExportPayload(dataset="customers")),
        }
        _reset_peak()
        report[f"{job}_base_mb"] = _status_mb("VmRSS")
        started = time.perf_counter()
        report[job] = (await calls[job]()).model_dump(mode="json")
        report[f"{job}_seconds"] = time.perf_counter() - started
        report[f"{job}_peak_mb"] = _status_mb("VmHWM")
    finally:
        await engine.dispose()
    return report


if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    print(
        json.dumps(
            asyncio.run(
                _child(
                    arguments["database_url"],
                    arguments["env"],
                    job=arguments["job"],
                    path=arguments["path"],
                )
            )
        )
    )
