"""The schedules file: its entries, its errors (one line each), and the cron jobs made of them."""

from __future__ import annotations

from datetime import UTC, datetime, time
from pathlib import Path

import pytest

from jobs.exports.nightly import NightlyPayload
from jobs.models import ExportPayload
from worker.main import ARQ_TIMEOUT_MARGIN_S, cron_jobs, cron_schedule
from worker.schedules import (
    NoArguments,
    ScheduleError,
    job_of,
    load_schedules,
    read_schedules,
    schedule_spec,
)
from worker.settings import Settings

NOW = datetime(2026, 11, 25, 15, 51, 34, tzinfo=UTC)

GOOD = """
[[schedule]]
name = "hourly-transfers"
cron = "5 * * * *"
job = "export_dataset"
args = { dataset = "transfers", incremental = "hourly-transfers", format = "jsonl" }
keep = 48

[[schedule]]
name = "nightly-customers"
cron = "30 1 * * *"
job = "export_dataset"
keep = 7

[schedule.args]
dataset = "customers"
compress = true

[[schedule]]
name = "ping-db"
cron = "*/10 * * * 1-5"
job = "ping"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "schedules.toml"
    path.write_text(text)
    return path


def test_entries_of_a_schedules_file(tmp_path: Path) -> None:
    hourly, nightly, ping = read_schedules(write(tmp_path, GOOD))
    assert (hourly.name, hourly.job, hourly.cron_text, hourly.keep) == (
        "hourly-transfers",
        "export_dataset",
        "5 * * * *",
        48,
    )
    assert hourly.kwargs == {
        "dataset": "transfers",
        "incremental": "hourly-transfers",
        "format": "jsonl",
    }
    assert hourly.payload == ExportPayload(
        dataset="transfers", incremental="hourly-transfers", format="jsonl"
    )
    assert hourly.function == "export_dataset@hourly-transfers"
    assert nightly.kwargs == {"dataset": "customers", "compress": True}
    assert (ping.function, ping.keep, ping.kwargs) == ("ping@ping-db", None, {})
    assert hourly.next_run(NOW) == datetime(2026, 11, 25, 16, 5, 0, 123456, tzinfo=UTC)
    assert nightly.as_json(NOW) == {
        "name": "nightly-customers",
        "job": "export_dataset",
        "function": "export_dataset@nightly-customers",
        "cron": "30 1 * * *",
        "args": {"dataset": "customers", "compress": True},
        "keep": 7,
        "next_run": "2026-11-26T01:30:00Z",
    }
    assert job_of(hourly.function) == "export_dataset"


def test_without_a_file_the_nightly_export_is_the_one_entry() -> None:
    settings = Settings(ETL_NIGHTLY_AT="03:15:20", ETL_EXPORT_KEEP=4)
    (entry,) = load_schedules(settings)
    assert (entry.name, entry.job, entry.function, entry.cron_text, entry.keep) == (
        "nightly_export",
        "nightly_export",
        "nightly_export",
        "15 3 * * *",
        4,
    )
    assert entry.payload == NightlyPayload()  # its retention: ETL_EXPORT_KEEP, read by the job
    assert entry.next_run(NOW) == datetime(2026, 11, 26, 3, 15, 20, 123456, tzinfo=UTC)


def test_the_nightly_export_cron_job_is_as_it_was() -> None:
    settings = Settings(ETL_NIGHTLY_AT=time(2, 0), ETL_KEEP_RESULT=600, ETL_MAX_TRIES=3)
    (job,) = cron_jobs(settings)
    assert (job.name, job.unique, job.keep_result_s, job.max_tries) == (
        "nightly_export",
        True,
        600,
        3,
    )
    assert (job.month, job.day, job.weekday, job.hour, job.minute, job.second) == (
        None,
        None,
        None,
        {2},
        {0},
        0,
    )
    assert job.timeout_s == 3600 + ARQ_TIMEOUT_MARGIN_S
    assert cron_schedule(settings, NOW) == [
        {"function": "nightly_export", "next_run": "2026-11-26T02:00:00.123456Z"}
    ]


def test_each_entry_is_a_cron_job_of_its_own(tmp_path: Path) -> None:
    settings = Settings(ETL_SCHEDULES=write(tmp_path, GOOD), ETL_KEEP_RESULT=600)
    jobs = cron_jobs(settings)
    assert [job.name for job in jobs] == [
        "export_dataset@hourly-transfers",
        "export_dataset@nightly-customers",
        "ping@ping-db",
    ]
    assert all(job.unique and job.keep_result_s == 600 for job in jobs)
    assert (jobs[2].minute, jobs[2].weekday) == ({0, 10, 20, 30, 40, 50}, {0, 1, 2, 3, 4})
    assert [row["function"] for row in cron_schedule(settings, NOW)] == [j.name for j in jobs]


def test_an_entry_runs_its_job_with_its_arguments(tmp_path: Path) -> None:
    hourly, _, ping = read_schedules(write(tmp_path, GOOD))
    spec = schedule_spec(hourly)
    assert (spec.name, spec.payload, spec.result.__name__, spec.timeout_s) == (
        "export_dataset@hourly-transfers",
        NoArguments,
        "ScheduledExportResult",
        3600,
    )
    assert (schedule_spec(ping).name, schedule_spec(ping).result.__name__) == (
        "ping@ping-db",
        "PingResult",
    )


def test_an_entry_named_after_the_nightly_export_runs_under_its_name(tmp_path: Path) -> None:
    text = '[[schedule]]\nname = "nightly_export"\ncron = "0 3 * * *"\njob = "nightly_export"\n'
    (entry,) = read_schedules(write(tmp_path, text + "keep = 3\n"))
    assert (entry.function, entry.keep, entry.payload) == (
        "nightly_export",
        3,
        NightlyPayload(keep=3),
    )


def test_an_empty_file_schedules_nothing(tmp_path: Path) -> None:
    assert read_schedules(write(tmp_path, "# nothing runs on a schedule\n")) == []


def entry(**fields: str) -> str:
    """One [[schedule]] table: a valid ping entry, with `fields` replacing or adding lines."""
    lines = {"name": '"ping-db"', "cron": '"0 * * * *"', "job": '"ping"', **fields}
    return "[[schedule]]\n" + "".join(f"{k} = {v}\n" for k, v in lines.items() if v != "-")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("schedule = [", "not valid TOML: Invalid value (at end of document)"),
        (
            '[schedules]\nname = "x"\n',
            "unknown key 'schedules'; the file holds [[schedule]] tables only",
        ),
        ("schedule = 3\n", "schedule must be [[schedule]] tables, not one value"),
        ("schedule = [3]\n", "schedule #1: a table expected, got an integer"),
        (
            entry(kep="3"),
            "schedule 'ping-db': unknown key 'kep'; known: args, cron, job, keep, name",
        ),
        (entry(name="-"), "schedule #1: name: required"),
        (entry(name="7"), "schedule #1: name: a string expected, got an integer"),
        (
            entry(name='"every hour"'),
            "schedule #1: name 'every hour': use letters, digits, '-' and '_' (at most 64, "
            "starting with a letter or digit)",
        ),
        (entry(cron="-"), "schedule 'ping-db': cron: required"),
        (
            entry(cron='"61 * * * *"'),
            "schedule 'ping-db': cron '61 * * * *': minute: 61 is out of range 0-59",
        ),
        (
            entry(cron='"@hourly"'),
            "schedule 'ping-db': cron '@hourly': 5 fields expected (minute hour day-of-month "
            "month day-of-week), got 1",
        ),
        (
            entry(job='"exprt_dataset"'),
            "schedule 'ping-db': unknown job 'exprt_dataset'; known: export_dataset, import_file, "
            "nightly_export, ping, transfer_funds, upsert_rows",
        ),
        (entry(args='"x"'), "schedule 'ping-db': args: a table expected, got a string"),
        (
            entry(args='{ touch_db = "maybe" }'),
            "schedule 'ping-db': args: touch_db: Input should be a valid boolean, "
            "unable to interpret input",
        ),
        (
            entry(args="{ db = true }"),
            "schedule 'ping-db': args: db: Extra inputs are not permitted",
        ),
        (
            entry(job='"export_dataset"', args='{ dataset = "orders" }'),
            "schedule 'ping-db': args: dataset: unknown dataset 'orders'; known: accounts, "
            "customers, transfers",
        ),
        (entry(job='"export_dataset"'), "schedule 'ping-db': args: dataset: Field required"),
        (
            entry(keep="3"),
            "schedule 'ping-db': keep: only for the jobs that write files "
            "(export_dataset, nightly_export)",
        ),
        (
            entry(job='"export_dataset"', args='{ dataset = "accounts" }', keep="0"),
            "schedule 'ping-db': keep: a whole number of files, at least 1, expected; got 0",
        ),
        (
            entry(job='"export_dataset"', args='{ dataset = "accounts" }', keep='"7"'),
            "schedule 'ping-db': keep: a whole number of files, at least 1, expected; got '7'",
        ),
        (
            entry(name='"nightly"', job='"export_dataset"', args='{ dataset = "accounts" }'),
            "schedule 'nightly': name 'nightly' is the nightly export's file prefix; "
            "choose another",
        ),
        (
            entry() + entry(name='"other"') + entry(),
            "schedule 'ping-db': the name is used twice (entries 1 and 3)",
        ),
    ],
)
def test_a_bad_file_is_one_line_naming_the_entry_and_the_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ScheduleError) as caught:
        read_schedules(path)
    assert caught.value.message == f"ETL_SCHEDULES {path}: {problem}"


def test_a_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ScheduleError) as caught:
        load_schedules(Settings(ETL_SCHEDULES=tmp_path / "nope.toml"))
    assert caught.value.message == f"ETL_SCHEDULES {tmp_path}/nope.toml: no such file"
    with pytest.raises(ScheduleError) as caught:
        read_schedules(tmp_path)
    assert caught.value.message == f"ETL_SCHEDULES {tmp_path}: is a directory, not a TOML file"
    (tmp_path / "latin1.toml").write_bytes(b"# caf\xe9\n")
    with pytest.raises(ScheduleError) as caught:
        read_schedules(tmp_path / "latin1.toml")
    assert caught.value.message == f"ETL_SCHEDULES {tmp_path}/latin1.toml: not UTF-8 text"


def test_an_empty_variable_means_no_file() -> None:
    assert Settings(ETL_SCHEDULES="").schedules_file is None
