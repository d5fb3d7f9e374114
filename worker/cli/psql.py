"""`etl db` (or `etl psql`): psql on the configured database, the embedded one included.

psql is given the URL's host, port, user and database on its command line, which anyone on the
machine may read (`ps`); the password travels only in psql's environment (PGPASSWORD), which only
its own user can read. The embedded PostgreSQL listens on a unix socket: its directory is the host.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence

from sqlalchemy.engine import make_url

from jobs.errors import ConfigError
from worker.cli.health import servers
from worker.settings import Settings

# asyncpg's `ssl` query values that are not libpq sslmodes.
_SSL_MODES = {"true": "require", "false": "disable"}


def psql_command(database_url: str, psql_args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """psql's arguments and the environment variables to add to ours: no password in the first."""
    url = make_url(database_url)
    host = _one(url.query.get("host")) or url.host
    port = _one(url.query.get("port")) or (str(url.port) if url.port else None)
    argv = ["psql"]
    for flag, value in (
        ("--host", host),
        ("--port", port),
        ("--username", url.username),
        ("--dbname", url.database),
    ):
        if value:
            argv += [flag, value]
    extra = list(psql_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    env = {"PGAPPNAME": "etl db"}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    ssl = _one(url.query.get("sslmode")) or _one(url.query.get("ssl"))
    if ssl:
        env["PGSSLMODE"] = _SSL_MODES.get(ssl.lower(), ssl)
    return argv + extra, env


def _one(value: str | tuple[str, ...] | None) -> str | None:
    """A query parameter's value (the first, if it was given more than once)."""
    if isinstance(value, tuple):
        return value[0] if value else None
    return value


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    """Replace this process with psql (its exit code is the command's)."""
    settings = servers(settings)
    assert settings.database_url is not None
    program = shutil.which("psql")
    if program is None:
        raise ConfigError(
            "psql is not installed (or not on PATH): install PostgreSQL's client "
            "(Debian: apt install postgresql-client)"
        )
    argv, env = psql_command(settings.database_url, args.psql_args)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(program, argv, {**os.environ, **env})
