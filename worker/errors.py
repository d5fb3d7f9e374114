"""The service's errors: permanent ones fail a job at once, transient ones are retried.

Each class's docstring is its default message. Messages are one line, name what is wrong and
what to do, and never carry a password.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

# SQLSTATEs worth another try: deadlock, serialization failure, too many connections,
# admin/crash shutdown, cannot connect now, connection failures.
TRANSIENT_SQLSTATES = frozenset(
    {"40P01", "40001", "53300", "57P01", "57P02", "57P03", "08000", "08001", "08003", "08006"}
)


class EtlError(Exception):
    """The ETL job failed."""

    def __init__(self, message: str | None = None, **context: Any) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.context = context
        super().__init__(self.message)


class ConfigError(EtlError):
    """The configuration is not usable."""


class PermanentError(EtlError):
    """The job cannot succeed as asked; it is not retried."""


class InvalidPayload(PermanentError):
    """The job's arguments are not valid."""


class UnknownDataset(PermanentError):
    """No such dataset."""


class PathNotAllowed(PermanentError):
    """The path is outside the directory the job may use."""


class InputFileError(PermanentError):
    """The input file cannot be read."""


class TooManyRejects(PermanentError):
    """Too many rows were rejected; nothing was loaded."""


class TransientError(EtlError):
    """A server was unavailable; the job will be tried again."""


def sqlstate_of(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE carried by an asyncpg or SQLAlchemy error, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(code, str):
            return code
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return None


def is_transient(exc: BaseException) -> bool:
    """True for failures that another try may not meet: lost servers, deadlocks, overload."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, EtlError):
        return False
    code = sqlstate_of(exc)
    if code is not None:
        return code in TRANSIENT_SQLSTATES
    # Imported here so this module stays importable without the drivers.
    import asyncpg
    import redis.exceptions
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    chain: list[BaseException] = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    return any(
        isinstance(
            e,
            ConnectionError
            | TimeoutError
            | asyncio.TimeoutError
            | socket.gaierror
            | asyncpg.exceptions.PostgresConnectionError
            | asyncpg.exceptions.CannotConnectNowError
            | asyncpg.exceptions.TooManyConnectionsError
            | asyncpg.exceptions.InterfaceError
            | redis.exceptions.ConnectionError
            | redis.exceptions.TimeoutError,
        )
        for e in chain
    )
