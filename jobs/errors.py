"""The errors a job raises: permanent ones fail it at once, transient ones are retried.

Each class's docstring is its default message. Messages are one line, name what is wrong and
what to do, and never carry a password.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

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


class UnexpectedError(PermanentError):
    """The job met an error it does not handle; the worker's log has the traceback."""


class IdempotencyConflict(PermanentError):
    """This job id was already used for different work; use a new id."""


class JobTimeout(PermanentError):
    """The job did not finish within its time limit; it is not retried."""


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


# OS errors met while connecting: refused, reset, unreachable, or a unix socket that is not there
# (PostgreSQL removes its socket file while it restarts).
_CONNECT_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENOENT,
    }
)


def _cause_chain(exc: BaseException) -> list[BaseException]:
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 10:
        chain.append(chain[-1].__cause__)
    return chain


def _is_lost_connection(exc: BaseException) -> bool:
    # Imported here so this module stays importable without the drivers.
    import asyncpg
    import redis.exceptions
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.DBAPIError):
        return bool(exc.connection_invalidated)
    if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError):
        return False  # redis-py files these under ConnectionError; a wrong password stays wrong
    if isinstance(
        exc,
        ConnectionError
        | TimeoutError
        | asyncio.TimeoutError
        | socket.gaierror
        | asyncpg.exceptions.PostgresConnectionError
        | redis.exceptions.ConnectionError
        | redis.exceptions.TimeoutError
        # The pool had no connection to give within its timeout: load, not a bad job.
        | sa_exc.TimeoutError
        | sa_exc.DisconnectionError,
    ):
        return True
    if isinstance(exc, asyncpg.exceptions.InterfaceError):
        # Most InterfaceErrors are bugs or bad data (DataError); a closed connection is not. This
        # is the test SQLAlchemy's own asyncpg dialect uses, needed here for raw asyncpg (COPY).
        return "connection is closed" in str(exc)
    # A file that is not there is the job's input problem (InputFileError); a socket connect
    # failure carries no file name.
    return (
        isinstance(exc, OSError)
        and exc.errno in _CONNECT_ERRNOS
        and getattr(exc, "filename", None) is None
    )


def is_transient(exc: BaseException) -> bool:
    """True for failures that another try may not meet: lost servers, deadlocks, overload."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, EtlError):
        return False
    code = sqlstate_of(exc)
    if code is not None:
        return code in TRANSIENT_SQLSTATES
    return any(_is_lost_connection(e) for e in _cause_chain(exc))


def is_expected(exc: BaseException | None) -> bool:
    """True for a failure the job's input explains (payload, file, rows, its time limit): a
    permanent error other than UnexpectedError. Logged as a warning, never with a traceback."""
    return isinstance(exc, PermanentError) and not isinstance(exc, UnexpectedError)


def describe(exc: BaseException) -> str:
    """One line saying what went wrong, for logs, the CLI and the error kept in Redis.

    The innermost explicit cause is shown: SQLAlchemy's text of a driver error carries the SQL
    statement and its parameters (row data) over several lines; the driver's own error says the
    same in one line without them.
    """
    if isinstance(exc, EtlError):
        return exc.message
    shown = _cause_chain(exc)[-1]
    orig = getattr(shown, "orig", None)
    if isinstance(orig, BaseException):
        shown = orig
    text = str(shown).strip().splitlines()
    first = text[0] if text else ""
    if not first and isinstance(shown, TimeoutError):
        first = "no answer in time"
    return f"{type(shown).__name__}: {first}"[:500] if first else type(shown).__name__


def validation_problems(
    exc: ValidationError, *, name: Callable[[Sequence[str]], str] | None = None
) -> list[str]:
    """`where: problem` for each error pydantic found, never echoing the input values.

    `name` turns an error's location into what the reader knows it by (a CLI flag, a setting's
    variable); by default the dotted path.
    """
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = [str(part) for part in error["loc"]]
        where = name(loc) if name is not None else ".".join(loc)
        problem = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{where or 'value'}: {problem}")
    return parts


def payload_error(exc: ValidationError) -> InvalidPayload:
    """One line naming each bad field of a job's payload and why."""
    problems = validation_problems(exc, name=lambda loc: ".".join(loc) or "payload")
    return InvalidPayload("invalid payload: " + "; ".join(problems))
