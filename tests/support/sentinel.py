"""A private Redis Sentinel group: a primary, its replicas and three Sentinels on local ports.

Everything listens on 127.0.0.1 on free ports, keeps nothing on disk and needs the password
(Sentinels themselves need none). Each server writes its config and log under one directory;
`close()` stops them all. The fault tests kill the primary and watch a replica take over.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

SERVICE = "etl-primary"
QUORUM = 2
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def sentinel_executable() -> str | None:
    return shutil.which("redis-sentinel")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    port: int
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@dataclass
class SentinelGroup:
    directory: Path
    password: str
    replicas: int = 2
    primary: Server | None = None
    replica_servers: list[Server] = field(default_factory=list)
    sentinels: list[Server] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://:{self.password}@{hosts}/{SERVICE}"

    def _redis_config(self, port: int, *, replica_of: int | None) -> str:
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"requirepass {self.password}",
            f"masterauth {self.password}",
            'save ""',
            "appendonly no",
            f"dir {self.directory}",
            f"logfile {self.directory / f'redis-{port}.log'}",
            # A replica's first sync starts at once, not after Redis's default 5 s.
            "repl-diskless-sync yes",
            "repl-diskless-sync-delay 0",
            "replica-announce-ip 127.0.0.1",
        ]
        if replica_of is not None:
            lines.append(f"replicaof 127.0.0.1 {replica_of}")
        return "\n".join(lines) + "\n"

    def _sentinel_config(self, port: int, primary_port: int) -> str:
        return (
            "\n".join(
                [
                    f"port {port}",
                    "bind 127.0.0.1",
                    f"dir {self.directory}",
                    f"logfile {self.directory / f'sentinel-{port}.log'}",
                    "sentinel announce-ip 127.0.0.1",
                    "sentinel resolve-hostnames no",
                    f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} {QUORUM}",
                    f"sentinel auth-pass {SERVICE} {self.password}",
                    f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {SERVICE} 1",
                ]
            )
            + "\n"
        )

    def _spawn(self, name: str, port: int, text: str, *args: str) -> Server:
        config = self.directory / f"{name}.conf"
        config.write_text(text)
        log = self.directory / f"{name}.log"
        server = Server(name=name, port=port, config=config, log=log)
        server.process = subprocess.Popen(
            [args[0], str(config), *args[1:]],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return server

    def start(self, *, redis_server: str, redis_sentinel: str, within_s: float = 30) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        primary_port = free_port()
        self.primary = self._spawn(
            f"redis-{primary_port}",
            primary_port,
            self._redis_config(primary_port, replica_of=None),
            redis_server,
        )
        self._wait_answering(self.primary, within_s=10)
        for _ in range(self.replicas):
            port = free_port()
            replica = self._spawn(
                f"redis-{port}",
                port,
                self._redis_config(port, replica_of=primary_port),
                redis_server,
            )
            self.replica_servers.append(replica)
        for _ in range(3):
            port = free_port()
            self.sentinels.append(
                self._spawn(
                    f"sentinel-{port}",
                    port,
                    self._sentinel_config(port, primary_port),
                    redis_sentinel,
                )
            )
        self._wait_ready(within_s=within_s)

    def client(self, port: int, *, sentinel: bool = False) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1",
            port=port,
            password=None if sentinel else self.password,
            socket_timeout=2,
            socket_connect_timeout=2,
        )

    def _wait_answering(self, server: Server, *, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while True:
            with contextlib.suppress(redis.exceptions.RedisError), self.client(server.port) as c:
                if c.ping():
                    return
            if not server.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} did not start; see {self.directory}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        for replica in self.replica_servers:
            with self.client(replica.port) as c:
                if c.info("replication").get("master_link_status") != "up":
                    return False
        for sentinel in self.sentinels:
            with self.client(sentinel.port, sentinel=True) as c:
                state = c.sentinel_master(SERVICE)
                # Each must know the others (to vote) and every replica (to promote one).
                if int(state["num-other-sentinels"]) < len(self.sentinels) - 1:
                    return False
                if int(state["num-slaves"]) < len(self.replica_servers):
                    return False
        return True

    def _wait_ready(self, *, within_s: float) -> None:
        deadline = time.monotonic() + within_s
        while True:
            with contextlib.suppress(redis.exceptions.RedisError):
                if self._ready():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Sentinel group did not settle; see {self.directory}")
            time.sleep(0.1)

    def primary_port(self) -> int | None:
        """The primary's port as the Sentinels agree on it (None while they disagree)."""
        seen: set[int | None] = set()
        for sentinel in self.sentinels:
            try:
                with self.client(sentinel.port, sentinel=True) as c:
                    address = c.sentinel_get_master_addr_by_name(SERVICE)
            except redis.exceptions.RedisError:
                address = None
            seen.add(int(address[1]) if address else None)
        return seen.pop() if len(seen) == 1 else None

    def cut_replication(self) -> None:
        """Stop the replicas receiving writes: their link drops and they cannot log in again.

        Writes then reach the primary alone, as in the moments before a crash that a replica had
        not caught up with; `restore_replication()` lets them sync (from whichever primary) again.
        """
        assert self.primary is not None
        for replica in self.replica_servers:
            with self.client(replica.port) as c:
                c.config_set("masterauth", "not-the-password")
        with self.client(self.primary.port) as c:
            c.client_kill_filter(_type="slave")

    def restore_replication(self) -> None:
        for replica in self.replica_servers:
            with self.client(replica.port) as c:
                c.config_set("masterauth", self.password)

    def kill_primary(self) -> Server:
        """SIGKILL the current primary: no shutdown, no last replication, as when a machine dies."""
        assert self.primary is not None
        killed = self.primary
        killed.stop(kill=True)
        return killed

    def logs(self) -> str:
        parts = []
        for path in sorted(self.directory.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for server in [*self.sentinels, *self.replica_servers, self.primary]:
            if server is not None:
                server.stop()
