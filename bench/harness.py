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

CEILING = "a ceiling"
"""Words every ceiling row's note holds: how a reader of the JSON (and read_json) tells a ceiling
(peak RSS growth, lower is better) from a floor."""


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
    growth: dict[str, Any] | None = None
    """Growth rows only (`--growth`): {"series": what was measured, "size": rows, and "measure":
    "rate" (throughput at that size) or "peak_rss" (the largest size's peak RSS over the
    smallest's)}."""
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


def plural(count: int, noun: str) -> str:
    """`1 job`, `100 jobs`."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def error_text(exc: BaseException) -> str:
    """One line: the exception's type and message, clipped."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {message[:300]}"


Prepare = Callable[[], Awaitable[None]]
Run = Callable[[], Awaitable[Measured]]


async def _no_prepare() -> None:
    return None


@dataclass(frozen=True)
class Baseline:
    """What a subject is held against, and the name of the row that comparison makes."""

    scenario: str
    name: str
    run: Run
    target: float | None
    note: str | None = None
    """How to read the comparison (what the baseline does or skips); kept in the row's note."""


@dataclass
class _Side:
    """One side of a comparison: its runs so far, or the error that stopped it."""

    label: str
    runs: list[Measured] = field(default_factory=list)
    error: str | None = None

    async def measure(self, run: Run, prepare: Prepare, *, number: int, rounds: int) -> None:
        if self.error is not None:
            return
        await prepare()
        try:
            measured = await run()
            self.runs.append(measured)
            say(
                f"  {self.label}, round {number}/{rounds}: {measured.seconds:.2f} s, "
                f"{measured.rate:,.0f}/s"
            )
        except Exception as exc:
            self.error = error_text(exc)
            say(f"  {self.label}: FAILED {self.error}")
            if not isinstance(exc, BenchError | NotImplementedError):
                traceback.print_exc(file=sys.stderr)

    def median_rate(self) -> float | None:
        if self.error is not None or not self.runs:
            return None
        return statistics.median(m.rate for m in self.runs)


async def compare_all(
    *,
    rows: int,
    rounds: int,
    subject: Run,
    baselines: list[Baseline],
    prepare: Prepare = _no_prepare,
) -> list[Row]:
    """Run `subject` and each baseline in turn, `rounds` times, each from the same prepared state;
    one row per baseline.

    Alternating spreads the machine's drift (other load, caches, autovacuum) over all sides, and
    sharing the subject's runs between baselines saves running the same job again. The numbers
    are medians. A failing subject gives error rows whose baselines are still measured, so they
    show what the job will be held against.
    """
    ours = _Side(baselines[0].scenario)
    theirs = [_Side(f"{b.scenario}: baseline {b.name}") for b in baselines]
    for number in range(1, rounds + 1):
        await ours.measure(subject, prepare, number=number, rounds=rounds)
        for baseline, side in zip(baselines, theirs, strict=True):
            await side.measure(baseline.run, prepare, number=number, rounds=rounds)
    out: list[Row] = []
    for baseline, side in zip(baselines, theirs, strict=True):
        row = Row(scenario=baseline.scenario, rows=rows, baseline=baseline.name,
                  target=baseline.target)  # fmt: skip
        if ours.median_rate() is not None:
            row.rows = ours.runs[0].rows
            row.seconds = statistics.median(m.seconds for m in ours.runs)
            row.rate = ours.median_rate()
            peaks = [m.peak_rss_mb for m in ours.runs if m.peak_rss_mb is not None]
            row.peak_rss_mb = max(peaks) if peaks else None
        row.baseline_rate = side.median_rate()
        if row.rate and row.baseline_rate:
            row.ratio = row.rate / row.baseline_rate
        notes = [f"error: {ours.error}"] if ours.error else []
        notes += [f"baseline error: {side.error}"] if side.error else []
        notes += [baseline.note] if baseline.note else []
        row.note = "; ".join(notes) or None
        out.append(row)
    return out


async def compare(
    *,
    scenario: str,
    rows: int,
    rounds: int,
    subject: Run,
    baseline_name: str,
    baseline: Run,
    target: float | None,
    prepare: Prepare = _no_prepare,
    note: str | None = None,
) -> Row:
    """`compare_all` with one baseline."""
    only = Baseline(scenario=scenario, name=baseline_name, run=baseline, target=target, note=note)
    rows_out = await compare_all(
        rows=rows, rounds=rounds, subject=subject, baselines=[only], prepare=prepare
    )
    return rows_out[0]


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


def write_json(rows: list[Row], path: Path, run: dict[str, Any] | None = None) -> None:
    """The results file: {"run": how and where it was measured, "rows": one object per row}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"run": run or {}, "rows": [row.as_json() for row in rows]}
    text = json.dumps(data, indent=2, ensure_ascii=False)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)


def read_json(path: Path) -> tuple[dict[str, Any], list[Row]]:
    """(run, rows) from a results file; a file of the first round's format (a bare list of rows)
    has no run description."""
    data = json.loads(path.read_text())
    run: dict[str, Any] = {}
    if isinstance(data, dict):
        run, data = data.get("run") or {}, data.get("rows")
    if not isinstance(data, list):
        raise BenchError(f"{path}: not a benchmark results file")
    rows: list[Row] = []
    for item in data:
        row = Row(**{k: v for k, v in item.items() if k in _ROW_FIELDS})
        # A ceiling row says so in its note; the JSON has no field for it.
        row.target_is_ceiling = CEILING in (row.note or "")
        rows.append(row)
    return run, rows


_ROW_FIELDS = frozenset(f for f in Row.__dataclass_fields__ if f != "target_is_ceiling")
