"""What operators see, without servers: the canonical line's level, arq's failure lines, the cron
schedule, the nightly line's fields, metrics counted from a job's fields, and their settings."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from jobs.errors import (
    ConfigError,
    InvalidPayload,
    JobTimeout,
    PathNotAllowed,
    TooManyRejects,
    TransientError,
    UnexpectedError,
)
from jobs.models import ExportResult, NightlyResult
from worker.logging import _FailedJobLine
from worker.main import cron_schedule
from worker.metrics import Metrics
from worker.runner import finished_level
from worker.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("ETL_METRICS_PORT", "ETL_METRICS_HOST", "ETL_NIGHTLY_AT"):
        monkeypatch.delenv(name, raising=False)
    yield


def load(**env: Any) -> Settings:
    return Settings(_env_file=None, **env)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("status", "error", "level"),
    [
        ("complete", None, logging.INFO),
        ("retrying", None, logging.INFO),
        ("cancelled", None, logging.INFO),
        ("failed", InvalidPayload("invalid payload: dataset: unknown"), logging.WARNING),
        ("failed", PathNotAllowed(), logging.WARNING),
        ("failed", TooManyRejects(), logging.WARNING),
        ("failed", JobTimeout(), logging.WARNING),
        ("failed", UnexpectedError("DataError: boom"), logging.ERROR),
        ("failed", TransientError("gave up after 5 tries: ..."), logging.ERROR),
        ("failed", ConfigError("ETL_NIGHTLY_DATASETS names no dataset"), logging.ERROR),
        ("failed", None, logging.ERROR),
    ],
)
def test_the_canonical_line_level_follows_who_can_fix_the_failure(
    status: str, error: BaseException | None, level: int
) -> None:
    assert finished_level(status, error) == level


def failed_record(error: BaseException) -> logging.LogRecord:
    try:
        raise error
    except type(error):
        exc_info = sys.exc_info()
    return logging.LogRecord(
        "arq.worker", logging.ERROR, "worker.py", 629, "%s failed", ("job",), exc_info
    )


@pytest.mark.parametrize(
    ("error", "level", "traceback"),
    [
        (InvalidPayload("invalid payload: rows: too many"), "WARNING", False),
        (JobTimeout(), "WARNING", False),
        (UnexpectedError("DataError: boom"), "ERROR", False),  # job.crashed has the traceback
        (TransientError("gave up after 5 tries: refused"), "ERROR", True),
        (ValueError("not ours"), "ERROR", True),
    ],
)
def test_arqs_failure_line_is_a_warning_without_traceback_for_expected_failures(
    error: BaseException, level: str, traceback: bool
) -> None:
    record = failed_record(error)
    assert _FailedJobLine().filter(record) is True
    assert (record.levelname, record.levelno) == (level, getattr(logging, level))
    assert (record.exc_info is not None) is traceback


@pytest.mark.parametrize(
    ("now", "next_run"),
    [
        (datetime(2026, 11, 25, 1, 59, 59, tzinfo=UTC), "2026-11-25T02:00:00.123456Z"),
        (datetime(2026, 11, 25, 2, 0, 1, tzinfo=UTC), "2026-11-26T02:00:00.123456Z"),
        (datetime(2026, 12, 31, 23, 0, tzinfo=UTC), "2027-01-01T02:00:00.123456Z"),
    ],
)
def test_cron_schedule_gives_the_next_run_in_utc(now: datetime, next_run: str) -> None:
    settings = load(ETL_NIGHTLY_AT="02:00")
    assert cron_schedule(settings, now) == [{"function": "nightly_export", "next_run": next_run}]


def test_cron_schedule_reads_utc_whatever_the_zone_of_now() -> None:
    settings = load(ETL_NIGHTLY_AT="23:30")
    paris = datetime(2026, 7, 1, 1, 0, tzinfo=ZoneInfo("Europe/Paris"))  # 23:00 UTC the day before
    assert cron_schedule(settings, paris) == [
        {"function": "nightly_export", "next_run": "2026-06-30T23:30:00.123456Z"}
    ]


def export(dataset: str, rows: int, size: int) -> ExportResult:
    return ExportResult(
        dataset=dataset,
        path=f"/x/{dataset}/nightly-{dataset}.csv.gz",
        rows=rows,
        bytes=size,
        sha256="0" * 64,
        format="csv",
        compressed=True,
    )


def test_the_nightly_result_flattens_each_dataset_for_the_canonical_line() -> None:
    result = NightlyResult(
        exports=[export("customers", 3, 100), export("accounts", 2, 50)],
        deleted=["/x/customers/old.csv.gz"],
    )
    assert result.log_fields() == {
        "datasets": ["customers", "accounts"],
        "rows": 5,
        "bytes": 150,
        "customers_rows": 3,
        "customers_bytes": 100,
        "customers_path": "/x/customers/nightly-customers.csv.gz",
        "accounts_rows": 2,
        "accounts_bytes": 50,
        "accounts_path": "/x/accounts/nightly-accounts.csv.gz",
        "deleted": ["/x/customers/old.csv.gz"],
        "deleted_count": 1,
    }


def test_metrics_count_jobs_rows_and_transfers_from_the_canonical_fields() -> None:
    metrics = Metrics()
    value = metrics.registry.get_sample_value
    for _ in range(3):
        metrics.job_started()
    imported = {"rows_read": 9, "inserted": 5, "updated": 2, "skipped": 0, "rejected": 1}
    metrics.job_finished("import_file", status="complete", duration_s=0.5, fields=imported)
    transfers = {"applied": 4, "rejected": 1, "duplicate": 2}
    metrics.job_finished("transfer_funds", status="complete", duration_s=0.1, fields=transfers)
    failed = {"error": "x", "error_type": "TooManyRejects", "inserted": 7, "max_tries": 5}
    metrics.job_finished("import_file", status="failed", duration_s=2.0, fields=failed)

    assert value("etl_jobs_in_progress") == 0
    assert value("etl_jobs_total", {"function": "import_file", "status": "complete"}) == 1
    assert value("etl_jobs_total", {"function": "import_file", "status": "failed"}) == 1
    assert value("etl_job_duration_seconds_count", {"function": "import_file"}) == 2
    assert value("etl_job_duration_seconds_sum", {"function": "import_file"}) == 2.5
    rows = {
        outcome: value("etl_rows_total", {"function": "import_file", "outcome": outcome})
        for outcome in ("inserted", "updated", "skipped", "rejected", "exported")
    }
    # Nothing from the failed run (it loaded nothing); no series for zero counts.
    assert rows == {"inserted": 5, "updated": 2, "skipped": None, "rejected": 1, "exported": None}
    assert {s: value("etl_transfers_total", {"status": s}) for s in transfers} == transfers
    assert value("etl_rows_total", {"function": "transfer_funds", "outcome": "rejected"}) is None
    assert value("etl_nightly_last_success_timestamp_seconds") == 0

    metrics.job_started()
    metrics.job_finished("nightly_export", status="complete", duration_s=1, fields={"rows": 7})
    assert value("etl_rows_total", {"function": "nightly_export", "outcome": "exported"}) == 7
    assert (value("etl_nightly_last_success_timestamp_seconds") or 0) > 1.7e9


def test_metrics_settings() -> None:
    assert (load().metrics_port, load().metrics_host) == (None, "127.0.0.1")
    assert load(ETL_METRICS_PORT="").metrics_port is None
    assert load(ETL_METRICS_PORT="9100", ETL_METRICS_HOST="0.0.0.0").metrics_port == 9100
    with pytest.raises(ValidationError, match="ETL_METRICS_PORT"):
        load(ETL_METRICS_PORT="70000")
