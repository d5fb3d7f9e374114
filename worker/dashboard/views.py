"""Turning what Redis holds into what a page shows: arguments without secrets, durations, progress
bars with rate and ETA, and the throughput chart's bars. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker.dashboard.queries import Throughput
from worker.settings import redact_url
from worker.status import JobState

_SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api[_-]?key|private[_-]?key|credential|auth", re.I
)
_URL_WITH_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/@]*:[^\s/@]*@", re.I)
MAX_ITEMS = 20
MAX_TEXT = 500
_COLOURS = {
    "imports": "#2b6cb0",
    "upserts": "#6b46c1",
    "exports": "#2f855a",
    "transfers": "#c05621",
    "other": "#718096",
}


def redact(value: Any, *, depth: int = 0) -> Any:
    """`value` fit to show: secrets masked, URLs without passwords, long lists and texts cut."""
    if depth > 6:
        return "…"
    if isinstance(value, dict):
        return {
            str(k): "***" if _SECRET_NAME.search(str(k)) and v else redact(v, depth=depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        shown = [redact(v, depth=depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            shown.append(f"… {len(value) - MAX_ITEMS} more")
        return shown
    if isinstance(value, str):
        if _URL_WITH_PASSWORD.search(value):
            value = " ".join(redact_url(word) for word in value.split(" "))
        return value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 1] + "…"
    return value


def job_json(state: JobState) -> dict[str, Any]:
    """A job for the JSON API and the job page: its state with arguments and result redacted."""
    out = state.as_json()
    for name in ("args", "kwargs", "result", "progress"):
        if name in out:
            out[name] = redact(out[name])
    if "error" in out:
        out["error"]["message"] = redact(out["error"]["message"])
    return out


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"


def between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)


def when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(moment: datetime | None, *, now: datetime | None = None) -> str:
    if moment is None:
        return "-"
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    if seconds < 0:
        return "in " + duration(-seconds)
    return duration(seconds) + " ago"


def counters(result: Any) -> str:
    """A result's numbers on one line: `rows_read=10 inserted=9 rejected=1`."""
    if not isinstance(result, dict):
        return ""
    parts = [
        f"{k}={v}"
        for k, v in result.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    if isinstance(result.get("exports"), list):
        parts.append(f"files={len(result['exports'])}")
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Progress:
    """A running job's progress bar."""

    done: int
    total: int | None
    unit: str
    rate: float | None
    """Per second, since the job started."""
    eta_s: float | None

    @property
    def percent(self) -> float | None:
        if not self.total:
            return None
        return min(100.0, 100.0 * self.done / self.total)


# The counter a job reports its advance in, and the one holding its total when it knows it.
_DONE_TOTAL = (("rows", None), ("transfers_done", "transfers"))


def progress_of(
    counts: dict[str, Any] | None, *, started_at: datetime | None, now: datetime
) -> Progress | None:
    if not counts:
        return None
    found = [
        (name, counts[name], total)
        for name, total in _DONE_TOTAL
        if isinstance(counts.get(name), int) and not isinstance(counts.get(name), bool)
    ]
    if not found:
        return None
    done_name, done, total_name = found[0]
    total = counts.get(total_name) if total_name else None
    total = total if isinstance(total, int) and total > 0 else None
    elapsed = between(started_at, now)
    rate = done / elapsed if elapsed and done else None
    eta = (total - done) / rate if rate and total is not None and total >= done else None
    unit = "transfers" if done_name == "transfers_done" else "rows"
    return Progress(done=done, total=total, unit=unit, rate=rate, eta_s=eta)


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass(frozen=True, slots=True)
class Chart:
    """A stacked bar chart, one bar per minute, drawn by the template as inline SVG."""

    title: str
    width: int
    height: int
    peak: float
    bars: list[Bar]
    legend: list[tuple[str, str, str]]
    """(family, colour, total text)."""
    first: str
    last: str


def chart(data: Throughput, *, what: str, width: int = 600, height: int = 120) -> Chart:
    """Jobs per minute (`what="jobs"`) or rows per second (`what="rows"`), stacked by family."""
    scale = 1.0 if what == "jobs" else 1 / 60
    columns = len(data.minutes)
    stacks = [0.0] * columns
    per_family = {
        name: [value * scale for value in getattr(series, what)]
        for name, series in data.families.items()
    }
    for values in per_family.values():
        stacks = [a + b for a, b in zip(stacks, values, strict=True)]
    peak = max(stacks, default=0.0) or 1.0
    slot = width / max(columns, 1)
    bars: list[Bar] = []
    base = [0.0] * columns
    for name, values in per_family.items():
        colour = _COLOURS.get(name, _COLOURS["other"])
        for i, value in enumerate(values):
            if value <= 0:
                continue
            h = value / peak * height
            label = f"{data.minutes[i]:%H:%M} {name}: {value:.3g}"
            bars.append(Bar(i * slot + 1, height - base[i] - h, slot - 2, h, colour, label))
            base[i] += h
    unit = "jobs/min" if what == "jobs" else "rows/s"
    legend = []
    for name, series in data.families.items():
        total = (
            f"{series.jobs_total} jobs, {series.rows_total / 3600:.1f} rows/s avg"
            if what == "jobs"
            else f"{series.rows_total} rows"
        )
        legend.append((name, _COLOURS.get(name, _COLOURS["other"]), total))
    return Chart(
        title=unit,
        width=width,
        height=height,
        peak=max(stacks, default=0.0),
        bars=bars,
        legend=legend,
        first=f"{data.minutes[0]:%H:%M}" if data.minutes else "",
        last=f"{data.minutes[-1]:%H:%M}" if data.minutes else "",
    )
