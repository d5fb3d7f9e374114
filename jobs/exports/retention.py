"""Keeping the newest export files of a dataset and deleting the older ones.

Only names the nightly job writes (`nightly-<dataset>-<stamp>-<tag>.<ext>`), or a scheduled export
writes (`<entry>-<dataset>-...`, jobs/exports/scheduled.py), are touched, each under its own
prefix: exports asked for by hand, and any other file an operator keeps in the directory, are
never deleted.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import structlog

from jobs.exports.files import TEMP_SUFFIX
from jobs.exports.staging import manifest_path

log = structlog.get_logger("jobs.exports.retention")

NIGHTLY_PREFIX = "nightly-"
# A temp file untouched this long belongs to a worker that was killed mid-export: a live export
# writes to its temp file continuously, and no export may run longer than an hour.
STALE_TEMP_S = 2 * 3600


def export_file_pattern(prefix: str, dataset: str) -> re.Pattern[str]:
    """The names of `dataset`'s export files written under `prefix` (staging.export_file_name)."""
    return re.compile(
        rf"{re.escape(prefix)}{re.escape(dataset)}-\d{{8}}T\d{{6}}\.\d{{3}}Z-[0-9a-f]{{8}}"
        r"\.(?:csv|jsonl)(?:\.gz)?"
    )


def nightly_file_pattern(dataset: str) -> re.Pattern[str]:
    return export_file_pattern(NIGHTLY_PREFIX, dataset)


def nightly_files(directory: Path, dataset: str) -> list[Path]:
    """The dataset's nightly files in `directory`, newest first (names start with the time)."""
    return export_files(directory, dataset, prefix=NIGHTLY_PREFIX)


def export_files(directory: Path, dataset: str, *, prefix: str) -> list[Path]:
    """The dataset's files written under `prefix` in `directory`, newest first."""
    pattern = export_file_pattern(prefix, dataset)
    with os.scandir(directory) as entries:
        names = [
            entry.name
            for entry in entries
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
        ]
    return [directory / name for name in sorted(names, reverse=True)]


def prune_nightly(directory: Path, *, dataset: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` nightly files (and their manifests); returns their paths."""
    return prune_exports(directory, prefix=NIGHTLY_PREFIX, dataset=dataset, keep=keep)


def prune_exports(directory: Path, *, prefix: str, dataset: str, keep: int) -> list[str]:
    """Delete all but the newest `keep` files written under `prefix` (and their manifests)."""
    deleted = []
    for path in export_files(directory, dataset, prefix=prefix)[keep:]:
        # Manifest first: a file left without one (if we stop here) is still matched next time.
        manifest_path(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        deleted.append(str(path))
    _remove_stale_temps(directory, prefix, dataset)
    return deleted


def _remove_stale_temps(directory: Path, prefix: str, dataset: str) -> None:
    pattern = re.compile(rf"\.{re.escape(prefix)}{re.escape(dataset)}-.*{re.escape(TEMP_SUFFIX)}")
    cutoff = time.time() - STALE_TEMP_S
    with os.scandir(directory) as entries:
        stale = [
            entry
            for entry in entries
            if pattern.fullmatch(entry.name)
            and entry.is_file(follow_symlinks=False)
            and entry.stat(follow_symlinks=False).st_mtime < cutoff
        ]
    for entry in stale:
        Path(entry.path).unlink(missing_ok=True)
        log.warning("export.stale_temp_removed", path=entry.path)
