"""psql and pgbench, the baselines, run as subprocesses against the benchmark's database."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy.engine import make_url

from bench.harness import BenchError, Measured, stopwatch

PSQL = "/usr/bin/psql"


def _tool(name: str, default: str | None = None) -> str:
    found = shutil.which(name) or (default if default and Path(default).exists() else None)
    if found is None:
        raise BenchError(f"{name} is not installed (needed as a baseline)")
    return found


@dataclass(frozen=True)
class PgClient:
    """Connection arguments for the PostgreSQL command-line tools, built from the database URL."""

    host: str | None
    port: int | None
    user: str | None
    password: str | None
    dbname: str
    settings: tuple[tuple[str, str], ...] = ()
    """Session settings every tool run with this client gets (PGOPTIONS `-c name=value`)."""

    @classmethod
    def from_url(cls, url: str) -> PgClient:
        parsed = make_url(url)
        # An embedded server listens on a unix socket: its directory comes as ?host=.
        socket_dir = parsed.query.get("host")
        host = parsed.host or (socket_dir if isinstance(socket_dir, str) else None)
        return cls(
            host=host,
            port=parsed.port,
            user=parsed.username,
            password=parsed.password if isinstance(parsed.password, str) else None,
            dbname=parsed.database or "postgres",
        )

    def args(self) -> list[str]:
        out: list[str] = []
        if self.host:
            out += ["-h", self.host]
        if self.port:
            out += ["-p", str(self.port)]
        if self.user:
            out += ["-U", self.user]
        return out

    def with_settings(self, settings: Mapping[str, str]) -> PgClient:
        """The same connection, its sessions given `settings` (a job's SET LOCALs)."""
        return replace(self, settings=tuple(settings.items()))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.password:
            env["PGPASSWORD"] = self.password
        if self.settings:
            # libpq reads PGOPTIONS as the startup packet's options: `-c name=value`, space
            # separated, a space inside a value escaped with a backslash.
            given = [f"-c {name}={value.replace(' ', chr(92) + ' ')}"
                     for name, value in self.settings]  # fmt: skip
            env["PGOPTIONS"] = " ".join(filter(None, [env.get("PGOPTIONS", ""), *given]))
        return env

    def psql_command(self, *extra: str) -> list[str]:
        return [_tool("psql", PSQL), "-X", "-q", "-v", "ON_ERROR_STOP=1", *self.args(), "-d",
                self.dbname, *extra]  # fmt: skip


async def _run(argv: list[str], *, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        detail = " ".join(err.decode(errors="replace").split())[:300]
        raise BenchError(f"{Path(argv[0]).name} exited with {proc.returncode}: {detail}")
    return out.decode(errors="replace")


async def psql(client: PgClient, *, command: str | None = None, script: Path | None = None) -> str:
    """Run one psql command (`-c`) or script (`-f`); its stdout."""
    extra = ["-c", command] if command is not None else ["-f", str(script)]
    return await _run(client.psql_command(*extra), env=client.env())


async def timed_psql(
    client: PgClient, *, rows: int, command: str | None = None, script: Path | None = None
) -> Measured:
    """The wall time of one psql process, start-up and connection included."""
    with stopwatch() as elapsed:
        await psql(client, command=command, script=script)
    return Measured(seconds=elapsed[0], rows=rows)


async def timed_shell(
    client: PgClient, *, pipeline: list[list[str]], rows: int, output: Path | None = None
) -> Measured:
    """The wall time of a shell pipeline of commands (e.g. psql | gzip > file)."""
    line = " | ".join(shlex.join(argv) for argv in pipeline)
    if output is not None:
        line += " > " + shlex.quote(str(output))
    with stopwatch() as elapsed:
        await _run(["/bin/bash", "-o", "pipefail", "-c", line], env=client.env())
    return Measured(seconds=elapsed[0], rows=rows)


_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
_DONE = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


async def pgbench(
    client: PgClient,
    *,
    script: Path,
    clients: int,
    threads: int,
    seconds: int,
    per_transaction: int = 1,
) -> Measured:
    """A timed pgbench run; its rate is pgbench's own tps (connection time excluded) times
    `per_transaction`, the units of work (transfers) each of the script's transactions does."""
    argv = [_tool("pgbench"), "-n", "-c", str(clients), "-j", str(threads), "-T", str(seconds),
            "-f", str(script), *client.args(), client.dbname]  # fmt: skip
    out = await _run(argv, env=client.env())
    tps, done = _TPS.search(out), _DONE.search(out)
    if tps is None or done is None:
        raise BenchError(f"pgbench printed no tps line: {' '.join(out.split())[:200]}")
    failed = _FAILED.search(out)
    if failed and int(failed.group(1)):
        raise BenchError(f"pgbench: {failed.group(1)} transactions failed")
    transactions = int(done.group(1))
    rate = float(tps.group(1))
    return Measured(
        seconds=transactions / rate if rate else float(seconds),
        rows=transactions * per_transaction,
    )
