"""The worker's JSON lines answer an operator's questions: which jobs failed and why (at warning
when the input explains it, at error otherwise, a traceback only for what nobody expected), what
the nightly export wrote and deleted, what runs and when. And the README's jq recipe for "failed
jobs in the last hour, with reasons", run on real lines."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as day_time
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from pydantic import BaseModel
from sqlalchemy import text

from jobs.catalogue import FUNCTIONS
from jobs.models import Payload
from jobs.spec import JobRun, etl_job
from tests.support.worker_helpers import run_burst
from worker.logging import configure_logging
from worker.main import functions
from worker.settings import Settings

ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")

# The README's recipe, exactly (RECIPE), run as the shell runs it.
JQ_FILTER = """fromjson? | objects
  | select(.event == "job.finished" and .status == "failed")
  | select(.timestamp | sub("\\\\.[0-9]+"; "") | fromdateiso8601 > now - 3600)
  | {timestamp, level, function, job_id, job_try, error_type, error}"""
RECIPE = f"jq -cR '{JQ_FILTER}' worker.log"
RECIPE_FIELDS = ("timestamp", "level", "function", "job_id", "job_try", "error_type", "error")


class NoPayload(Payload):
    pass


class Nothing(BaseModel):
    pass


@etl_job(name="divide_by_zero", payload=NoPayload, result=Nothing, timeout_s=10)
async def divide_by_zero(run: JobRun, payload: NoPayload) -> Nothing:
    """A bug: nothing about the input explains it."""
    async with run.sessionmaker() as session, session.begin():
        await session.execute(text("select 1 / 0"))
    return Nothing()


@etl_job(name="unreachable", payload=NoPayload, result=Nothing, timeout_s=10)
async def unreachable(run: JobRun, payload: NoPayload) -> Nothing:
    """A server that never answers: transient, retried, then given up."""
    raise ConnectionRefusedError(111, "Connect call failed ('10.0.0.1', 5432)")


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def finished(lines: list[dict[str, Any]], job_id: str) -> list[dict[str, Any]]:
    return [x for x in lines if x["event"] == "job.finished" and x.get("job_id") == job_id]


def arq_failed(lines: list[dict[str, Any]], job_id: str) -> dict[str, Any]:
    """arq's own line for the job's failure."""
    (line,) = [
        x
        for x in lines
        if x.get("logger") == "arq.worker"
        and f"{job_id}:" in x["event"]
        and " failed, " in x["event"]
    ]
    return line


async def enqueue(redis: ArqRedis, settings: Settings, function: str, **kwargs: Any) -> str:
    job = await redis.enqueue_job(function, _queue_name=settings.queue_name, **kwargs)
    assert job is not None
    return job.job_id


@dataclass(frozen=True)
class Run:
    settings: Settings
    ids: dict[str, str]
    lines: list[dict[str, Any]]


@pytest.fixture
async def run(settings: Settings, redis: ArqRedis, clean_db: None) -> Run:
    """One real worker run: a bad payload, a bug, a server given up on, a ping and a nightly export
    that deletes an older file; its lines as the worker wrote them."""
    settings = settings.model_copy(
        update={
            "max_tries": 2,
            "nightly_at": day_time(3, 15),
            "nightly_datasets": "accounts,customers",
            "export_keep": 1,
        }
    )
    older = (
        settings.export_dir / "accounts" / "nightly-accounts-20260101T000000.000Z-0badc0de.csv.gz"
    )
    older.parent.mkdir(parents=True)
    older.write_bytes(b"")
    ids = {
        "invalid": await enqueue(redis, settings, "upsert_rows", dataset="orders", rows=[]),
        "bug": await enqueue(redis, settings, "divide_by_zero"),
        "transient": await enqueue(redis, settings, "unreachable"),
        "ping": await enqueue(redis, settings, "ping", touch_db=False),
        "nightly": await enqueue(redis, settings, "nightly_export"),
        "older": str(older),
    }
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    try:
        fns = functions(settings, [*FUNCTIONS, divide_by_zero, unreachable])
        worker = await run_burst(settings, redis, functions=fns)
    finally:
        configure_logging("INFO", "json")
    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (2, 3, 1)
    return Run(settings, ids, json_lines(stream))


def test_an_expected_failure_is_one_warning_without_a_traceback(run: Run) -> None:
    (line,) = finished(run.lines, run.ids["invalid"])
    assert {k: line[k] for k in ("level", "status", "function", "job_try", "error_type")} == {
        "level": "warning",
        "status": "failed",
        "function": "upsert_rows",
        "job_try": 1,
        "error_type": "InvalidPayload",
    }
    assert line["error"] == (
        "invalid payload: dataset: unknown dataset 'orders'; known: accounts, customers, transfers"
    )
    arq_line = arq_failed(run.lines, run.ids["invalid"])
    assert arq_line["level"] == "warning"
    mine = [x for x in run.lines if x.get("job_id") == run.ids["invalid"]]
    assert [x for x in mine if "exception" in x] == []
    assert [x["event"] for x in mine if x["event"] == "job.crashed"] == []


def test_an_unexpected_failure_is_an_error_with_one_traceback(run: Run) -> None:
    (line,) = finished(run.lines, run.ids["bug"])
    assert {k: line[k] for k in ("level", "status", "function", "error_type", "error")} == {
        "level": "error",
        "status": "failed",
        "function": "divide_by_zero",
        "error_type": "DBAPIError",
        "error": "DivisionByZeroError: division by zero",
    }
    traced = [x for x in run.lines if x.get("job_id") == run.ids["bug"] and "exception" in x]
    assert [x["event"] for x in traced] == ["job.crashed"]
    assert traced[0]["level"] == "error"
    assert "division by zero" in traced[0]["exception"]
    arq_line = arq_failed(run.lines, run.ids["bug"])
    assert arq_line["level"] == "error"
    assert "UnexpectedError: DivisionByZeroError: division by zero" in arq_line["event"]


def test_a_transient_failure_given_up_is_an_error(run: Run) -> None:
    first, last = finished(run.lines, run.ids["transient"])
    reason = "ConnectionRefusedError: [Errno 111] Connect call failed ('10.0.0.1', 5432)"
    assert {k: first[k] for k in ("level", "status", "job_try", "error_type", "error")} == {
        "level": "info",
        "status": "retrying",
        "job_try": 1,
        "error_type": "ConnectionRefusedError",
        "error": reason,
    }
    assert {k: last[k] for k in ("level", "status", "job_try", "error_type", "error")} == {
        "level": "error",
        "status": "failed",
        "job_try": 2,
        "error_type": "ConnectionRefusedError",
        "error": f"gave up after 2 tries: {reason}",
    }
    # arq's line keeps the traceback: the one place that says where the connection was lost.
    arq_line = arq_failed(run.lines, run.ids["transient"])
    assert arq_line["level"] == "error"
    assert "ConnectionRefusedError" in arq_line["exception"]


def test_a_completed_job_has_one_finished_line_and_arqs_start_line(run: Run) -> None:
    job_id = run.ids["ping"]
    arq_lines = [
        x["event"]
        for x in run.lines
        if x.get("logger") == "arq.worker" and job_id in str(x.get("event"))
    ]
    # arq's "→" start line stays; its "← … ●" line says less than job.finished and is dropped.
    assert len(arq_lines) == 1 and " → " in arq_lines[0], arq_lines
    (line,) = finished(run.lines, job_id)
    assert line["status"] == "complete" and line["function"] == "ping"
    assert isinstance(line["duration_ms"], float)


def test_the_nightly_line_says_what_was_written_and_deleted(run: Run) -> None:
    (line,) = finished(run.lines, run.ids["nightly"])
    assert line["level"] == "info" and line["status"] == "complete"
    assert line["datasets"] == ["accounts", "customers"]
    assert (line["accounts_rows"], line["customers_rows"], line["rows"]) == (0, 0, 0)
    for dataset in ("accounts", "customers"):
        path = Path(line[f"{dataset}_path"])
        assert path.parent == run.settings.export_dir / dataset
        assert path.name.startswith(f"nightly-{dataset}-") and path.name.endswith(".csv.gz")
        assert line[f"{dataset}_bytes"] == path.stat().st_size > 0
    assert line["bytes"] == line["accounts_bytes"] + line["customers_bytes"]
    assert line["deleted"] == [run.ids["older"]]
    assert line["deleted_count"] == 1
    assert not Path(run.ids["older"]).exists()


def test_worker_started_lists_every_function_and_when_cron_jobs_run_next(run: Run) -> None:
    (started,) = [x for x in run.lines if x["event"] == "worker.started"]
    assert started["functions"] == [
        "import_file",
        "upsert_rows",
        "export_dataset",
        "transfer_funds",
        "ping",
        "nightly_export",
        "export_part",
    ]
    at = datetime.fromisoformat(started["timestamp"])
    expected = at.replace(hour=3, minute=15, second=0, microsecond=123_456)
    if expected <= at:
        expected += timedelta(days=1)
    assert started["cron"] == [
        {"function": "nightly_export", "next_run": expected.isoformat().replace("+00:00", "Z")}
    ]
    assert started["metrics"] is None
    assert started["tracing"].startswith("off")


def test_every_line_is_stamped_in_iso_8601_utc(run: Run) -> None:
    assert {x["logger"] for x in run.lines} >= {"arq.worker", "worker", "worker.job"}
    assert [x for x in run.lines if not ISO_UTC.fullmatch(x["timestamp"])] == []


def recipe_in_python(log_text: str, now: float) -> list[dict[str, Any]]:
    """What JQ_FILTER does, for a machine without jq."""
    out = []
    for raw in log_text.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(line, dict):
            continue
        if line.get("event") != "job.finished" or line.get("status") != "failed":
            continue
        stamp = re.sub(r"\.[0-9]+", "", line["timestamp"], count=1)
        when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        if when > now - 3600:
            out.append({k: line.get(k) for k in RECIPE_FIELDS})
    return out


def test_the_readme_jq_recipe_lists_the_last_hours_failures_with_reasons(
    run: Run, tmp_path: Path
) -> None:
    # A failure from two hours ago (a real line, its time moved back) and lines that are not JSON.
    failures = [x for x in run.lines if x["event"] == "job.finished" and x["status"] == "failed"]
    old = datetime.fromisoformat(failures[0]["timestamp"]) - timedelta(hours=2)
    stale = {**failures[0], "job_id": "stale", "timestamp": old.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
    log_file = tmp_path / "worker.log"
    log_file.write_text(
        "12:00:00: Starting worker (arq's CLI, text)\n"
        + json.dumps(stale)
        + "\n"
        + "\n".join(json.dumps(x) for x in run.lines)
        + "\n42\n"
    )
    if shutil.which("jq"):
        done = subprocess.run(
            ["bash", "-c", RECIPE], cwd=tmp_path, capture_output=True, text=True, check=True
        )
        found = [json.loads(x) for x in done.stdout.splitlines()]
    else:
        found = recipe_in_python(log_file.read_text(), time.time())
    assert found == [{k: x.get(k) for k in RECIPE_FIELDS} for x in failures]
    assert {x["job_id"]: (x["level"], x["error_type"]) for x in found} == {
        run.ids["invalid"]: ("warning", "InvalidPayload"),
        run.ids["bug"]: ("error", "DBAPIError"),
        run.ids["transient"]: ("error", "ConnectionRefusedError"),
    }
    assert recipe_in_python(log_file.read_text(), time.time()) == found
