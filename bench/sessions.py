"""The session settings each job gives its transaction, so that its baselines run with the same.

A job that says `SET LOCAL work_mem = '64MB'` gets more memory for its sorts and hash joins than a
psql baseline on the server's default; a comparison is fair only if both sides have the same.
psql and pgbench take them through PGOPTIONS (`-c name=value`): a baseline's psql session runs
one load, so a session setting is what SET LOCAL is in the job's transaction.

`uncovered()` reads the jobs' sources for `SET LOCAL` and names any setting this module does not
give the baselines of that job, so a job that starts setting something new fails the benchmark's
test until its baselines get the same.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

try:
    from jobs.imports.job import WORK_MEM
except ImportError:  # a checkout whose import job sets no work_mem of its own
    WORK_MEM = ""

IMPORT = {"TimeZone": "UTC", **({"work_mem": WORK_MEM} if WORK_MEM else {})}
"""import_file (both modes): SET LOCAL TimeZone and work_mem, jobs/imports/job.py."""
EXPORT = {"TimeZone": "UTC"}
"""export_dataset: SET LOCAL timezone, jobs/exports/stream.py (its REPEATABLE READ READ ONLY
snapshot has no psql equivalent for one COPY statement: a single statement sees one snapshot)."""
UPSERT_ROWS: dict[str, str] = {}
"""upsert_rows sets nothing; its executemany baseline shares the job's engine and its settings."""
TRANSFERS: dict[str, str] = {}
"""transfer_funds sets nothing per transaction. The engine's plan_cache_mode=force_custom_plan
does not apply to pgbench, whose simple protocol plans each statement anew anyway."""

BY_SOURCE: dict[str, dict[str, str]] = {
    "jobs/imports/job.py": IMPORT,
    "jobs/exports/stream.py": EXPORT,
    "jobs/upserts.py": UPSERT_ROWS,
    "jobs/transfers/job.py": TRANSFERS,
}

_SET_LOCAL = re.compile(r"\bset\s+local\s+([a-z_][a-z0-9_.]*)", re.IGNORECASE)


def describe(settings: dict[str, str]) -> str:
    """`work_mem=64MB, TimeZone=UTC`: for a row's note."""
    return ", ".join(f"{name}={value}" for name, value in settings.items())


def uncovered(root: Path = ROOT) -> list[str]:
    """`file: name` for every SET LOCAL in jobs/ whose setting the file's baselines do not get."""
    out: list[str] = []
    for path in sorted((root / "jobs").rglob("*.py")):
        source = str(path.relative_to(root))
        given = {name.lower() for name in BY_SOURCE.get(source, {})}
        for name in _SET_LOCAL.findall(path.read_text()):
            if name.lower() not in given:
                out.append(f"{source}: SET LOCAL {name}")
    return out
