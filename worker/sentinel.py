"""Redis Sentinel: the `redis+sentinel://` form of REDIS_URL, and a pool that follows the primary.

    redis+sentinel://[[user]:password@]host:port[,host:port…]/service_name[/db]

The hosts are the Sentinels (port 26379 when left out); the service name is the one their
`sentinel monitor` line gives; the user and password are the Redis primary's (the Sentinels
themselves are reached without one). Parsing is pure; building the pool does no I/O: every new
connection asks the Sentinels where the primary is, so a promotion is followed on reconnect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import unquote

from arq.connections import ArqRedis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

SCHEME = "redis+sentinel"
DEFAULT_PORT = 26379
SHAPE = "redis+sentinel://host:26379[,host:port…]/mymaster[/db]"
_SERVICE = re.compile(r"[A-Za-z0-9._-]+")

SENTINEL_TIMEOUT_S = 2.0
"""Connecting to or asking one Sentinel; the next one is asked when it runs out."""
CONNECT_TIMEOUT_S = 1.0
"""Connecting to the primary (arq's own default for a plain URL)."""


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A parsed `redis+sentinel://` URL; the password stays out of repr()."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def is_sentinel_url(value: str) -> bool:
    return value.split("://", 1)[0].lower() == SCHEME if "://" in value else False


def _problem(text: str) -> ValueError:
    # Never the URL nor a part of it: any part may be the password, misplaced.
    return ValueError(f"REDIS_URL: {text}")


def _host_port(item: str, number: int) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, sep, rest = item[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise _problem(f"sentinel {number} is not host:port (expected {SHAPE})")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise _problem(f"sentinel {number} has no host (expected {SHAPE})")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _problem(
            f"the port of sentinel {number} is not a number from 1 to 65535 (expected {SHAPE})"
        )
    return host, int(port_text)


def parse_sentinel_url(value: str) -> SentinelURL:
    """The URL's parts; ValueError in one line, never quoting the URL, when it is not usable."""
    scheme, sep, rest = value.strip().partition("://")
    if not sep or scheme.lower() != SCHEME:
        raise _problem(f"not a redis+sentinel:// URL (expected {SHAPE})")
    # The last @ ends the user info: a password may hold '/', '?', '#' or '@' unescaped.
    userinfo, at, located = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    if "?" in located or "#" in located:
        raise _problem(f"a redis+sentinel:// URL takes no ?query or #fragment (expected {SHAPE})")
    hosts, _, path = located.partition("/")
    if not hosts:
        raise _problem(f"a redis+sentinel:// URL needs at least one sentinel host: {SHAPE}")
    sentinels = tuple(
        _host_port(item.strip(), number) for number, item in enumerate(hosts.split(","), start=1)
    )
    service, _, db_text = path.partition("/")
    if not service:
        raise _problem(f"a redis+sentinel:// URL needs the service name: {SHAPE}")
    if not _SERVICE.fullmatch(service):
        raise _problem(
            "the Sentinel service name may hold only letters, digits, '.', '_' and '-' "
            f"(expected {SHAPE})"
        )
    db_text = db_text.removesuffix("/")
    if "/" in db_text:
        raise _problem(f"a redis+sentinel:// URL ends with /service_name[/db] (expected {SHAPE})")
    if db_text and not (db_text.isascii() and db_text.isdigit()):
        raise _problem(
            f"the database number after the service name is not a number (expected {SHAPE})"
        )
    return SentinelURL(
        sentinels=sentinels,
        service=service,
        db=int(db_text) if db_text else 0,
        username=username,
        password=password,
    )


class SentinelArqRedis(ArqRedis):
    """An ArqRedis on a Sentinel-managed pool: closing its owner closes the Sentinel clients too.

    (Handles made by `.client()` share the pool and leave it, and the Sentinels, open.)
    """

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        owner = (
            self.auto_close_connection_pool
            if close_connection_pool is None
            else close_connection_pool
        )
        await super().aclose(close_connection_pool)
        pool = self.connection_pool
        if owner and isinstance(pool, SentinelConnectionPool):
            for sentinel in pool.sentinel_manager.sentinels:
                await sentinel.aclose()


def master_pool(
    url: SentinelURL,
    *,
    retry: Retry | None,
    retry_on_error: list[type[Exception]] | None,
    command_timeout_s: float,
) -> SentinelArqRedis:
    """A client of `url`'s primary; no I/O until its first command."""
    options: dict[str, Any] = {
        "db": url.db,
        "username": url.username,
        "password": url.password,
        "encoding": "utf8",
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        # A primary that stops answering (a partition, not a crash) must still end in an error
        # that the retry, and then the Sentinels, can act on.
        "socket_timeout": command_timeout_s,
    }
    if retry is not None:
        options["retry"] = retry
    if retry_on_error is not None:
        options["retry_on_error"] = retry_on_error
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(url.sentinels),
        sentinel_kwargs={
            "socket_timeout": SENTINEL_TIMEOUT_S,
            "socket_connect_timeout": SENTINEL_TIMEOUT_S,
        },
        **options,
    )
    return cast(SentinelArqRedis, sentinel.master_for(url.service, redis_class=SentinelArqRedis))
