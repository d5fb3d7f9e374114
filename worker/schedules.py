"""Scheduled jobs as data: the entries of the schedules file (ETL_SCHEDULES), as arq cron jobs.

The file is TOML, one `[[schedule]]` table per entry:

    [[schedule]]
    name = "hourly-transfers"   # letters, digits, - and _: names the entry's runs and files
    cron = "5 * * * *"          # minute hour day-of-month month day-of-week, in UTC
    job = "export_dataset"      # a job of jobs.catalogue
    args = { dataset = "transfers", incremental = "hourly-transfers" }
    keep = 48                   # export jobs only: files kept, older ones deleted after each run

Without ETL_SCHEDULES there is one entry, `nightly_export` at ETL_NIGHTLY_AT, as there always was.
Everything is checked when the worker starts: a bad file stops it with one line naming the entry
and the problem. Each entry is an arq cron job of its own (unique=True, its result kept), so each
tick runs once however many workers run; it runs as `<job>@<name>` (the name `etl status`, the
logs and the metrics show), or under the job's own name for an entry named after a scheduled job
(`nightly_export`). An `export_dataset` entry writes its files under its name
(jobs/exports/scheduled.py).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from arq import cron
from arq.cron import CronJob
from pydantic import BaseModel, ValidationError

from jobs.catalogue import BY_NAME, SCHEDULED
from jobs.errors import ConfigError, validation_problems
from jobs.exports.job import export_dataset
from jobs.exports.nightly import NightlyPayload, nightly_export
from jobs.exports.retention import NIGHTLY_PREFIX
from jobs.exports.scheduled import ScheduledExportResult, scheduled_export
from jobs.models import ExportPayload, Payload
from jobs.spec import AnySpec, JobRun, JobSpec
from worker.crontab import Crontab, CrontabError, parse_crontab
from worker.runner import arq_function
from worker.settings import Settings

ENTRY_KEYS = ("name", "cron", "job", "args", "keep")
KEEPING_JOBS = (export_dataset.name, nightly_export.name)
"""The jobs an entry may give `keep`: the ones that write export files."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_SCHEDULED_NAMES = frozenset(spec.name for spec in SCHEDULED)


class NoArguments(Payload):
    """A scheduled run takes no arguments: they are its entry's, checked at start-up."""


@dataclass(frozen=True)
class Schedule:
    """One entry: which job runs, with which arguments, when (UTC)."""

    name: str
    job: str
    cron_text: str
    kwargs: dict[str, Any]
    """The entry's `args`, as written."""
    keep: int | None
    """Files kept after each run (export jobs); None: all (the nightly export: ETL_EXPORT_KEEP)."""
    crontab: Crontab = field(repr=False)
    payload: BaseModel = field(repr=False)
    """The arguments validated with the job's payload model."""
    second: int = 0
    """The second of the minute it runs at (ETL_NIGHTLY_AT may give one; the file cannot)."""

    @property
    def function(self) -> str:
        """The name its runs have in Redis, the logs and the metrics (arq's cron name)."""
        if self.name == self.job and self.job in _SCHEDULED_NAMES:
            return self.job
        return f"{self.job}@{self.name}"

    def next_run(self, now: datetime) -> datetime:
        """Its first run after `now`, in UTC, as the worker reckons it."""
        return self.crontab.next_run(now, second=self.second)

    def as_json(self, now: datetime) -> dict[str, Any]:
        """`etl schedules --json`: the entry and its next run (ISO-8601, UTC, to the second)."""
        return {
            "name": self.name,
            "job": self.job,
            "function": self.function,
            "cron": self.cron_text,
            "args": self.kwargs,
            "keep": self.keep,
            "next_run": utc_text(self.next_run(now)),
        }


def utc_text(when: datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def job_of(function: str) -> str:
    """The job a run's function name runs: `export_dataset@hourly` runs `export_dataset`."""
    return function.partition("@")[0]


class ScheduleError(ConfigError):
    """The schedules file cannot be used."""


def default_schedules(settings: Settings) -> list[Schedule]:
    """What runs without a schedules file: the nightly export at ETL_NIGHTLY_AT."""
    at = settings.nightly_at
    text = f"{at.minute} {at.hour} * * *"
    return [
        Schedule(
            name=nightly_export.name,
            job=nightly_export.name,
            cron_text=text,
            kwargs={},
            keep=settings.export_keep,
            crontab=parse_crontab(text),
            payload=NightlyPayload(),
            second=at.second,
        )
    ]


def load_schedules(settings: Settings) -> list[Schedule]:
    """The worker's schedules: ETL_SCHEDULES' entries, or the default; ScheduleError in one line."""
    if settings.schedules_file is None:
        return default_schedules(settings)
    return read_schedules(settings.schedules_file)


def read_schedules(path: Path) -> list[Schedule]:
    """The entries of a schedules file; ScheduleError naming the file, the entry and the problem."""
    where = f"ETL_SCHEDULES {path}"
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ScheduleError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise ScheduleError(f"{where}: is a directory, not a TOML file") from None
    except PermissionError:
        raise ScheduleError(f"{where}: cannot be read (permission denied)") from None
    except UnicodeDecodeError:
        raise ScheduleError(f"{where}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScheduleError(f"{where}: not valid TOML: {exc}") from None
    return parse_schedules(data, where=where)


def parse_schedules(data: Mapping[str, Any], *, where: str) -> list[Schedule]:
    """The entries of a parsed schedules file; `where` starts each error's line."""
    unknown = sorted(set(data) - {"schedule"})
    if unknown:
        raise ScheduleError(
            f"{where}: unknown key {unknown[0]!r}; the file holds [[schedule]] tables only"
        )
    entries = data.get("schedule", [])
    if not isinstance(entries, list):
        raise ScheduleError(f"{where}: schedule must be [[schedule]] tables, not one value")
    schedules: list[Schedule] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(entries, start=1):
        label = _label(raw, number)
        try:
            schedule = _entry(raw)
        except (ScheduleError, CrontabError) as exc:
            raise ScheduleError(f"{where}: schedule {label}: {exc}") from None
        if schedule.name in seen:
            raise ScheduleError(
                f"{where}: schedule {label}: the name is used twice "
                f"(entries {seen[schedule.name]} and {number})"
            )
        seen[schedule.name] = number
        schedules.append(schedule)
    return schedules


def _label(raw: Any, number: int) -> str:
    """How an error names an entry: its name when it has a usable one, else its number."""
    name = raw.get("name") if isinstance(raw, dict) else None
    if isinstance(name, str) and _NAME.fullmatch(name):
        return repr(name)
    return f"#{number}"


def _entry(raw: Any) -> Schedule:
    if not isinstance(raw, dict):
        raise ScheduleError(f"a table expected, got {_toml_type(raw)}")
    unknown = sorted(set(raw) - set(ENTRY_KEYS))
    if unknown:
        raise ScheduleError(f"unknown key {unknown[0]!r}; known: {', '.join(sorted(ENTRY_KEYS))}")
    name = _required_text(raw, "name")
    if not _NAME.fullmatch(name):
        raise ScheduleError(
            f"name {name!r}: use letters, digits, '-' and '_' (at most 64, "
            "starting with a letter or digit)"
        )
    text = _required_text(raw, "cron")
    try:
        crontab = parse_crontab(text)
    except CrontabError as exc:
        raise ScheduleError(f"cron {text!r}: {exc}") from None
    job = _required_text(raw, "job")
    if job not in BY_NAME:
        raise ScheduleError(f"unknown job {job!r}; known: {', '.join(sorted(BY_NAME))}")
    args = raw.get("args", {})
    if not isinstance(args, dict):
        raise ScheduleError(f"args: a table expected, got {_toml_type(args)}")
    if job == export_dataset.name and f"{name}-" == NIGHTLY_PREFIX:
        # Its files would be named like the nightly export's: each one's retention would delete
        # the other's files.
        raise ScheduleError("name 'nightly' is the nightly export's file prefix; choose another")
    keep = _keep(raw, job=job)
    return Schedule(
        name=name,
        job=job,
        cron_text=crontab.text,
        kwargs=args,
        keep=keep,
        crontab=crontab,
        payload=_payload(job, args, keep=keep),
    )


def _required_text(raw: Mapping[str, Any], key: str) -> str:
    if key not in raw:
        raise ScheduleError(f"{key}: required")
    value = raw[key]
    if not isinstance(value, str):
        raise ScheduleError(f"{key}: a string expected, got {_toml_type(value)}")
    return value


def _keep(raw: Mapping[str, Any], *, job: str) -> int | None:
    if "keep" not in raw:
        return None
    keep = raw["keep"]
    if job not in KEEPING_JOBS:
        raise ScheduleError(f"keep: only for the jobs that write files ({', '.join(KEEPING_JOBS)})")
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ScheduleError(f"keep: a whole number of files, at least 1, expected; got {keep!r}")
    return keep


def _payload(job: str, args: Mapping[str, Any], *, keep: int | None) -> BaseModel:
    """The entry's arguments checked with the job's payload model, as the worker would."""
    spec = BY_NAME[job]
    data = dict(args)
    if job == nightly_export.name and keep is not None:
        data["keep"] = keep
    try:
        payload: BaseModel = spec.payload.model_validate(data)
    except ValidationError as exc:
        raise ScheduleError("args: " + "; ".join(validation_problems(exc))) from None
    if isinstance(payload, ExportPayload) and payload.parts > 1:
        # Retention keeps and deletes an entry's files one by one; an export in parts is many.
        raise ScheduleError("args: parts: a scheduled export is written in one part; drop parts")
    return payload


def _toml_type(value: Any) -> str:
    kinds: list[tuple[type, str]] = [(bool, "a boolean"), (int, "an integer"), (float, "a float")]
    kinds += [(str, "a string"), (list, "an array"), (dict, "a table"), (datetime, "a date-time")]
    return next((text for kind, text in kinds if isinstance(value, kind)), type(value).__name__)


def schedule_spec(schedule: Schedule) -> AnySpec:
    """The job the worker registers for an entry: the entry's job, with the entry's arguments."""
    base = BY_NAME[schedule.job]
    payload = schedule.payload

    if isinstance(payload, ExportPayload):

        async def run_export(run: JobRun, _: NoArguments) -> ScheduledExportResult:
            return await scheduled_export(run, payload, entry=schedule.name, keep=schedule.keep)

        return JobSpec(
            name=schedule.function,
            payload=NoArguments,
            result=ScheduledExportResult,
            timeout_s=base.timeout_s,
            impl=run_export,
        )

    async def run_job(run: JobRun, _: NoArguments) -> BaseModel:
        result: BaseModel = await base.impl(run, payload)
        return result

    return JobSpec(
        name=schedule.function,
        payload=NoArguments,
        result=base.result,
        timeout_s=base.timeout_s,
        impl=run_job,
    )


def cron_jobs(
    schedules: Sequence[Schedule], settings: Settings, *, timeout_margin_s: float
) -> list[CronJob]:
    """arq's cron jobs for the entries: each tick of each entry runs once across all workers."""
    return [
        cron(
            arq_function(schedule_spec(schedule)),
            name=schedule.function,
            **schedule.crontab.arq_options(),  # type: ignore[arg-type]
            second=schedule.second,
            # One run per tick across all workers: arq gives the tick's job a fixed id
            # (`<function>:<tick in ms>`) and refuses that id while the job is queued or its
            # result is kept. arq keeps no cron result by default, so a worker enqueuing late (its
            # loop stalled past the run) would queue the tick again; a kept result stops that.
            unique=True,
            keep_result=settings.keep_result_s,
            timeout=BY_NAME[schedule.job].timeout_s + timeout_margin_s,
            max_tries=settings.max_tries,
        )
        for schedule in schedules
    ]
