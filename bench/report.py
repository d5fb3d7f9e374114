"""What a results file says about its run, and the README's Performance table made from it.

`python -m bench --table bench/results/latest.json` prints a header line (machine, PostgreSQL,
date, the command that measured it) and the table, ready to paste into the README.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
from pathlib import Path
from typing import Any

from bench.harness import Row, read_json

TIMES = "\u00d7"  # the multiplication sign, as the README writes ratios
DASH = "\u2013"  # an en dash: the README's empty cell


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def describe_run(
    *,
    argv: list[str],
    rows: int,
    rounds: int,
    postgresql: str | None,
    redis: str | None,
    growth: list[int] | None = None,
) -> dict[str, Any]:
    """The JSON's "run": how, where and when the rows were measured."""
    return {
        "command": shlex.join(["python", "-m", "bench", *argv]),
        "date": dt.date.today().isoformat(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "postgresql": postgresql,
        "redis": redis,
        "rows": rows,
        "rounds": rounds,
        "growth_sizes": growth,
    }


def describe_size(run: dict[str, Any]) -> str:
    """`N = 1,000,000 rows, 3 round(s), medians`, or the growth sizes."""
    if "rows" not in run:
        return ""
    rounds = f"{run.get('rounds', '?')} round(s), medians"
    if run.get("growth_sizes"):
        return f"growth at {', '.join(f'{s:,}' for s in run['growth_sizes'])} rows, {rounds}"
    return f"N = {run['rows']:,} rows, {rounds}"


def header_line(run: dict[str, Any]) -> str:
    """One line naming the machine, PostgreSQL, the date and the command."""
    if not run:
        return "Measured by an earlier version of `python -m bench` (no run description saved)."
    machine = ", ".join(
        part
        for part in (
            f"{run['cpus']} CPUs" if run.get("cpus") else "",
            f"{run['memory_gib']:g} GiB" if run.get("memory_gib") else "",
            run.get("os") or "",
        )
        if part
    )
    servers = ", ".join(
        part
        for part in (
            f"PostgreSQL {run['postgresql']}" if run.get("postgresql") else "",
            f"Redis {run['redis']}" if run.get("redis") else "",
            f"Python {run['python']}" if run.get("python") else "",
        )
        if part
    )
    size = describe_size(run)
    return (
        f"Measured with `{run.get('command', 'python -m bench')}` on {run.get('host', '?')} "
        f"({machine}), {servers}, {run.get('date', '?')}; {size}."
    )


def _cell(value: float | None, digits: int = 0) -> str:
    return DASH if value is None else f"{value:,.{digits}f}"


def readme_table(rows: list[Row]) -> str:
    """The README's table: the terminal's columns, ≥/≤ and TIMES, and notes as numbered
    footnotes; the peak RSS column only when a row has one."""
    with_rss = any(row.peak_rss_mb is not None for row in rows)
    header = (
        "| scenario | rows or jobs | seconds | rows/s | baseline | baseline rows/s | ratio "
        "| target |"
    )
    rule = "|---|---:|---:|---:|---|---:|---:|---|"
    if with_rss:
        header += " peak RSS MB |"
        rule += "---:|"
    lines = [header, rule]
    notes: list[str] = []
    for row in rows:
        target = DASH
        if row.target is not None:
            sign = "≤" if row.target_is_ceiling else "≥"
            verdict = {True: " met", False: " missed", None: ""}[row.met]
            target = f"{sign} {row.target:g}{TIMES}{verdict}"
        scenario = row.scenario
        if row.note:
            notes.append(row.note)
            scenario += f" [{len(notes)}]"
        cells = [scenario, f"{row.rows:,}", _cell(row.seconds, 2), _cell(row.rate),
                 row.baseline or DASH, _cell(row.baseline_rate), _cell(row.ratio, 2),
                 target]  # fmt: skip
        if with_rss:
            cells.append(_cell(row.peak_rss_mb, 1))
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if notes:
        lines.append("")
        lines.extend(f"[{number}] {note}  " for number, note in enumerate(notes, 1))
    return "\n".join(lines)


def table_text(path: Path) -> str:
    """The header line and the README table of the results file at `path`."""
    run, rows = read_json(path)
    return f"{header_line(run)}\n\n{readme_table(rows)}"
