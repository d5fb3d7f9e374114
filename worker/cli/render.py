"""What `etl` prints: results on stdout, messages on stderr, never a password.

Job states and results are rendered here, apart from the commands that fetch them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from jobs.imports.quarantine import DEFAULT_PAGE, RejectedLine
from jobs.pages import Page
from worker.status import JobState

if TYPE_CHECKING:
    from worker.schedules import Schedule


def out(text: str = "") -> None:
    print(text, file=sys.stdout, flush=True)


def out_json(value: Any) -> None:
    out(json.dumps(value, default=str, ensure_ascii=False))


class Secrets:
    """Passwords from the URLs in the environment, scrubbed from anything the CLI prints."""

    def __init__(self) -> None:
        self._values: set[str] = set()

    def add_url(self, url: str | None) -> None:
        if not url:
            return
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password is None and "@" in url and "://" in url:
            # Not parseable as a URL: treat everything between the scheme and @ as secret.
            userinfo = url.split("://", 1)[1].rpartition("@")[0]
            password = userinfo.partition(":")[2] or None
        if password:
            self._values |= {password, unquote(password)}

    def scrub(self, text: str) -> str:
        for value in sorted(self._values, key=len, reverse=True):
            text = text.replace(value, "***")
        return text


SECRETS = Secrets()


def err(text: str) -> None:
    print(SECRETS.scrub(text), file=sys.stderr, flush=True)


class StatusLine:
    """One line on stderr rewritten in place, shown only when stderr is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._shown = False

    def show(self, text: str) -> None:
        sys.stderr.write("\r\033[K" + text[:200])
        sys.stderr.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self._shown = False


def tries(state: JobState) -> str:
    return f"{state.tries} {'try' if state.tries == 1 else 'tries'}"


def compact(value: Any, limit: int = 300) -> str:
    """`value` as one line of JSON, cut at `limit` characters."""
    text = json.dumps(value, default=str, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def progress_line(state: JobState, elapsed: float) -> str:
    parts = [f"{state.function} {state.job_id}: {state.state.replace('_', ' ')}"]
    if state.tries > 1:
        parts.append(f"(try {state.tries})")
    parts += [f"{k}={v}" for k, v in (state.progress or {}).items()]
    return " ".join([*parts, f"[{elapsed:.0f} s]"])


def result_lines(result: Any, *, indent: str = "  ") -> list[str]:
    """A job's result, a line per field; lists show their first five items."""
    if not isinstance(result, dict):
        return [indent + compact(result)]
    lines: list[str] = []
    for key, value in result.items():
        if isinstance(value, list):
            lines.append(f"{indent}{key}: {len(value)} item{'s' if len(value) != 1 else ''}")
            lines += [f"{indent}  - {compact(item, 200)}" for item in value[:5]]
            if len(value) > 5:
                lines.append(f"{indent}  … {len(value) - 5} more (--json shows all)")
        else:
            lines.append(f"{indent}{key}: {compact(value) if isinstance(value, dict) else value}")
    return lines


_HEADLINES = {
    "queued": "queued",
    "in_progress": "in progress",
    "complete": "complete",
    "failed": "failed",
    "cancelled": "cancelled",
}


def state_lines(state: JobState) -> list[str]:
    """`etl status`: what Redis knows about the job."""
    if state.state == "not_found":
        return [
            f"job {state.job_id}: not found (never enqueued, or its result expired: "
            "results are kept ETL_KEEP_RESULT seconds)"
        ]
    if state.state == "deferred":
        headline = f"waiting to run at {state.runs_at.isoformat() if state.runs_at else '?'}"
    else:
        headline = _HEADLINES[state.state]
    if state.tries:
        headline += f" ({tries(state)})"
    lines = [f"job {state.job_id}: {headline}", f"  function: {state.function}"]
    lines.append(f"  arguments: {compact(state.kwargs)}")
    if state.enqueued_at:
        lines.append(f"  enqueued: {state.enqueued_at.isoformat()}")
    if state.finished_at:
        lines.append(f"  finished: {state.finished_at.isoformat()}")
    if state.progress:
        lines.append(f"  progress: {' '.join(f'{k}={v}' for k, v in state.progress.items())}")
    if state.state == "complete":
        lines.append("  result:")
        lines += result_lines(state.result, indent="    ")
    if state.error is not None:
        lines.append(f"  error: {state.error}")
    if state.retried_as:
        lines.append(f"  retried as: {state.retried_as}")
    return lines


def failed_lines(state: JobState) -> list[str]:
    """`etl failed`: one failed job in three lines."""
    when = state.finished_at.isoformat(timespec="seconds") if state.finished_at else "?"
    retried = f"  retried as {state.retried_as}" if state.retried_as else ""
    return [
        f"{when}  {state.job_id}  {state.function}  tries={state.tries}{retried}",
        f"    error: {state.error}",
        f"    arguments: {compact(state.kwargs)}",
    ]


def _visible(text: str) -> str:
    """`text` with control characters escaped: a raw line must not drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def reject_lines(
    page: Page[RejectedLine, int], *, import_id: str, after: int | None, limit: int
) -> list[str]:
    """`etl rejects`: a line per rejected line, then how to get the next page (or `end`)."""
    if not page.rows and after is None:
        return [f"no rejected lines for import {import_id}", "end"]
    lines: list[str] = []
    for row in page.rows:
        lines.append(f"line {row.line_number}: {_visible(row.reason)}")
        lines.append(f"    {_visible(row.raw_line)}")
    if page.next_after is None:
        return [*lines, "end"]
    more = "" if limit == DEFAULT_PAGE else f" --limit {limit}"
    return [*lines, f"next: etl rejects {import_id} --after {page.next_after}{more}"]


def schedule_lines(entries: Sequence[Schedule], *, now: datetime, source: Path | None) -> list[str]:
    """`etl schedules`: a line per entry, in columns, under a header."""
    if not entries:
        return [f"no scheduled jobs: ETL_SCHEDULES {source} holds no [[schedule]] entry"]
    rows = [("NAME", "JOB", "CRON (UTC)", "NEXT RUN (UTC)", "KEEP", "ARGUMENTS")]
    for entry in entries:
        keep = "-" if entry.keep is None else str(entry.keep)
        when = entry.as_json(now)["next_run"]
        rows.append((entry.name, entry.job, entry.cron_text, when, keep, compact(entry.kwargs)))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, row[-1]]))
    return lines
