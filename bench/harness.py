"""Timing, alternating rounds, medians, and the results table (markdown and JSON)."""

from __future__ import annotations

import json
import statistics
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class BenchError(Exception):
    """A benchmark cannot run as asked; the message says why in one line."""


@dataclass(frozen=True)
class Measured:
    """One timed run: how long it took and how many rows (or jobs, or transactions) it handled."""

    seconds: float
    rows: int
    peak_rss_mb: float | None = None

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Row:
    """One line of the results; `note` says why a number is missing or how to read it."""

    scenario: str
    rows: int
    seconds: float | None = None
    rate: float | None = None
    baseline: str | None = None
    baseline_rate: float | None = None
    ratio: float | None = None
    target: float | None = None
    peak_rss_mb: float | None = None
    note: str | None = None
    # A ceiling (peak RSS growth) rather than a floor; said in `note` for JSON readers.
    target_is_ceiling: bool = field(default=False, repr=False)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("target_is_ceiling")
        for key in ("seconds", "rate", "baseline_rate", "ratio", "peak_rss_mb"):
            if data[key] is not None:
                data[key] = round(data[key], 4 if key in ("seconds", "ratio") else 1)
        return data

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        return self.ratio <= self.target if self.target_is_ceiling else self.ratio >= self.target


def say(message: str) -> None:
    """Progress for the person running the benchmark; the results go to stdout."""
    print(message, file=sys.stderr, flush=True)


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """`with stopwatch() as elapsed:` ... `elapsed[0]` is the wall time in seconds."""
    elapsed = [0.0]
    started = time.perf_counter()
    try:
        yield elapsed
    finally:
        elapsed[0] = time.perf_counter() - started


def error_text(exc: BaseException) -> str:
    """One line: the exception's type and message, clipped."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {message[:300]}"


Prepare = Callable[[], Awaitable[None]]
Run = Callable[[], Awaitable[Measured]]


async def _no_prepare() -> None:
    return None


async def compare(
    *,
    scenario: str,
    rows: int,
    rounds: int,
    subject: Run,
    baseline_name: str | None,
    baseline: Run | None,
    target: float | None,
    prepare: Prepare = _no_prepare,
) -> Row:
    """Run `subject` and `baseline` alternately, `rounds` times each, from the same prepared state.

    Alternating spreads the machine's drift (other load, caches, autovacuum) over both sides. The
    reported numbers are medians. A failing subject gives an error row and its baseline is still
    measured, so the row shows what the job will be held against.
    """
    ours: list[Measured] = []
    theirs: list[Measured] = []
    notes: list[str] = []
    subject_failed = baseline_failed = False
    for number in range(1, rounds + 1):
        if not subject_failed:
            say(f"  {scenario}: round {number}/{rounds}")
            await prepare()
            try:
                ours.append(await subject())
            except Exception as exc:
                subject_failed = True
                notes.append(f"error: {error_text(exc)}")
                say(f"  {scenario}: FAILED {error_text(exc)}")
                if not isinstance(exc, BenchError | NotImplementedError):
                    traceback.print_exc(file=sys.stderr)
        if baseline is not None and not baseline_failed:
            say(f"  {scenario}: baseline {baseline_name}, round {number}/{rounds}")
            await prepare()
            try:
                theirs.append(await baseline())
            except Exception as exc:
                baseline_failed = True
                notes.append(f"baseline error: {error_text(exc)}")
                say(f"  {scenario}: baseline FAILED {error_text(exc)}")
    row = Row(scenario=scenario, rows=rows, baseline=baseline_name, target=target)
    if ours and not subject_failed:
        row.rows = ours[0].rows
        row.seconds = statistics.median(m.seconds for m in ours)
        row.rate = statistics.median(m.rate for m in ours)
        peaks = [m.peak_rss_mb for m in ours if m.peak_rss_mb is not None]
        row.peak_rss_mb = max(peaks) if peaks else None
    if theirs and not baseline_failed:
        row.baseline_rate = statistics.median(m.rate for m in theirs)
    if row.rate and row.baseline_rate:
        row.ratio = row.rate / row.baseline_rate
    row.note = "; ".join(notes) or None
    return row


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def markdown_table(rows: list[Row]) -> str:
    header = (
        "| scenario | rows or jobs | seconds | rows/s | baseline | baseline rows/s | ratio "
        "| target | peak RSS MB |"
    )
    lines = [header, "|---|---:|---:|---:|---|---:|---:|---|---:|"]
    notes: list[str] = []
    for row in rows:
        target = "-"
        if row.target is not None:
            sign = "<=" if row.target_is_ceiling else ">="
            verdict = {True: " met", False: " MISSED", None: ""}[row.met]
            target = f"{sign} {row.target:g}x{verdict}"
        scenario = row.scenario
        if row.note:
            notes.append(row.note)
            scenario += f" [{len(notes)}]"
        cells = [
            scenario,
            f"{row.rows:,}",
            _number(row.seconds, 2),
            _number(row.rate),
            row.baseline or "-",
            _number(row.baseline_rate),
            _number(row.ratio, 2),
            target,
            _number(row.peak_rss_mb, 1),
        ]
        # A shell pipeline in a baseline's name must not split the markdown cell.
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if notes:
        lines.append("")
        lines.extend(f"[{number}] {note}" for number, note in enumerate(notes, 1))
    return "\n".join(lines)


def write_json(rows: list[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps([row.as_json() for row in rows], indent=2, ensure_ascii=False)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)
