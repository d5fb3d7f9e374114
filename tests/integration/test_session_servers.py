"""A test session without TEST_*_URL stops the embedded servers it started, and only those."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.database import ROOT
from worker import embedded
from worker.settings import Settings

pytestmark = pytest.mark.timeout(300)

PROBE = """
def test_the_servers_answer(server_settings):
    assert server_settings.database_url.startswith("postgresql+asyncpg://postgres@/postgres")
    assert server_settings.redis_url.startswith("unix://")
"""


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path, whose root is 0700: the embedded PostgreSQL runs as the
    # `pgserver` user when we are root (as in test_embedded.py).
    root = Path(tempfile.mkdtemp(prefix="etl-session-"))
    root.chmod(0o755)
    yield root / "state"
    embedded.stop(Settings(ETL_STATE_DIR=root / "state"))
    shutil.rmtree(root, ignore_errors=True)


def run_session(state_dir: Path) -> subprocess.CompletedProcess[str]:
    """A pytest session of one test using tests/conftest.py's servers, with no TEST_*_URL."""
    probe = state_dir.parent / "test_probe.py"
    probe.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "DATABASE_URL"))}
    env["TEST_ETL_STATE_DIR"] = str(state_dir)
    return subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "-c", str(ROOT / "pyproject.toml"), "-p", "tests.conftest", str(probe),
            # Its own: a session given none makes /tmp/pytest-of-<user> 0700 again, which would
            # shut the embedded PostgreSQL's user out of the tmp_path of this session's tests.
            "--basetemp", str(state_dir.parent / "basetemp"),
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def test_servers_the_session_started_are_stopped_and_others_left_running(state_dir: Path) -> None:
    settings = Settings(ETL_STATE_DIR=state_dir)
    done = run_session(state_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
    assert embedded.running(settings) == []

    # Started before the session (`etl demo` by hand, say): still running after it.
    embedded.resolve(Settings(DATABASE_URL=None, REDIS_URL=None, ETL_STATE_DIR=state_dir))
    assert embedded.running(settings) == ["postgres", "redis"]
    done = run_session(state_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert embedded.running(settings) == ["postgres", "redis"]
