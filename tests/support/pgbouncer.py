"""A real pgbouncer in transaction mode in front of the test PostgreSQL (TEST_VIA_PGBOUNCER=1).

pgbouncer refuses to run as root: it runs as `postgres` (`-u`), from a directory that user owns
(ini, auth file, log, pid). Its `*` database entry forwards any database name to the server, so
the test session's own database is reached under the same name on pgbouncer's port.

Transaction mode hands the server connection back to the pool at every COMMIT or ROLLBACK: the
next transaction of the same client may run on another server connection. So the engine in front
of it runs with DB_POOL=null and DB_STATEMENT_CACHE=off (no named prepared statement, no session
state outliving a transaction). Migrations never go through it: they need session settings.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

from worker.settings import normalise_database_url

RUN_AS = "postgres"
ENABLED = os.environ.get("TEST_VIA_PGBOUNCER", "") == "1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ini(workdir: Path, *, host: str, port: int, listen_port: int, pool_size: int) -> str:
    return f"""\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir / "userlist.txt"}
pool_mode = transaction
max_client_conn = 500
default_pool_size = {pool_size}
logfile = {workdir / "pgbouncer.log"}
pidfile = {workdir / "pgbouncer.pid"}
"""


def _wait_until_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text() if log.exists() else ""
            raise RuntimeError(f"pgbouncer exited with {proc.returncode}: {text[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"pgbouncer did not listen on port {port} within 15 s")


@contextlib.contextmanager
def pgbouncer_in_front(database_url: str, *, pool_size: int = 20) -> Iterator[str]:
    """`database_url` rewritten to go through a pgbouncer in transaction mode, while it runs.

    `pool_size` server connections at most per database: fewer than clients makes them share.
    """
    url = make_url(database_url)
    if not url.host or url.host.startswith("/"):
        raise RuntimeError("TEST_VIA_PGBOUNCER=1 needs TEST_DATABASE_URL on TCP (host:port)")
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(binary).exists():
        raise RuntimeError("TEST_VIA_PGBOUNCER=1 needs pgbouncer: apt-get install pgbouncer")
    owner = pwd.getpwnam(RUN_AS)
    workdir = Path(tempfile.mkdtemp(prefix="etl-pgbouncer-"))
    listen_port = _free_port()
    (workdir / "pgbouncer.ini").write_text(
        _ini(
            workdir,
            host=url.host,
            port=url.port or 5432,
            listen_port=listen_port,
            pool_size=pool_size,
        )
    )
    # trust: pgbouncer asks no password, but the user must be listed.
    (workdir / "userlist.txt").write_text(f'"{url.username or RUN_AS}" ""\n')
    for path in (workdir, *workdir.iterdir()):
        os.chown(path, owner.pw_uid, owner.pw_gid)
    proc = subprocess.Popen(
        [binary, "-u", RUN_AS, str(workdir / "pgbouncer.ini")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until_listening(listen_port, proc, workdir / "pgbouncer.log")
        through = url.set(host="127.0.0.1", port=listen_port).render_as_string(False)
        yield normalise_database_url(through)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
