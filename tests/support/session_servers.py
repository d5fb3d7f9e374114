"""The servers of a test session: the ones TEST_*_URL name, or embedded ones stopped afterwards.

Embedded servers that a test session starts are stopped when the last test session using that
state dir ends; servers it found running (started by `etl` by hand, say) are left running. Each
session holds a shared lock on `<state dir>/.test-sessions` while it runs; the one that can turn
it into an exclusive lock at its end is the last, and stops what `.started-by-tests` lists.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from worker import embedded
from worker.settings import Settings

SESSIONS_LOCK = ".test-sessions"
STARTED_MARKER = ".started-by-tests"


@contextlib.contextmanager
def session_servers(base: Settings) -> Iterator[Settings]:
    """`base` resolved to real servers for the session; embedded ones it started stopped after."""
    wanted = {
        name
        for name, url in (("postgres", base.database_url), ("redis", base.redis_url))
        if not url
    }
    if not wanted:
        yield base
        return
    state_dir = base.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / SESSIONS_LOCK, "a") as lock:
        # Waits while the last session before this one stops the servers.
        fcntl.flock(lock, fcntl.LOCK_SH)
        started = wanted - set(embedded.running(base))
        resolved = embedded.resolve(base)
        _mark(state_dir, started)
        try:
            yield resolved
        finally:
            _stop_if_last(lock, base)


def _mark(state_dir: Path, started: set[str]) -> None:
    if started:
        marker = state_dir / STARTED_MARKER
        known = set(marker.read_text().split()) if marker.exists() else set()
        marker.write_text(" ".join(sorted(known | started)))


def _stop_if_last(lock: TextIO, base: Settings) -> None:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another session still uses the servers: the last one out stops them
    marker = base.state_dir / STARTED_MARKER
    if marker.exists():
        embedded.stop(base, servers=marker.read_text().split())
        marker.unlink()
