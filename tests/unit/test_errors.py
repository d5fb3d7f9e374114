"""Which failures are retried: real asyncpg, SQLAlchemy and redis-py exceptions, no server needed.

The SQLAlchemy errors are built the way SQLAlchemy builds them at run time: the asyncpg error is
translated by the asyncpg dialect's own adapter, then wrapped in a DBAPIError, each raised from the
one before (so `__cause__` and `orig` are what a job meets).
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import asyncpg
import pytest
import redis.exceptions
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql.asyncpg import (
    AsyncAdapt_asyncpg_connection,
    PGDialect_asyncpg,
)

from jobs.errors import (
    EtlError,
    InputFileError,
    InvalidPayload,
    JobTimeout,
    PathNotAllowed,
    PermanentError,
    TooManyRejects,
    TransientError,
    UnexpectedError,
    UnknownDataset,
    describe,
    is_transient,
    sqlstate_of,
)

DBAPI: Any = PGDialect_asyncpg.import_dbapi()


def raised_from(error: BaseException, cause: BaseException | None = None) -> BaseException:
    """`error` as it is after `raise error from cause`."""
    try:
        raise error from cause
    except BaseException as caught:
        return caught


def through_sqlalchemy(error: Exception, *, invalidated: bool = False) -> BaseException:
    """The DBAPIError a SQLAlchemy statement raises when asyncpg raised `error`."""
    try:
        AsyncAdapt_asyncpg_connection._handle_exception_no_connection(DBAPI, error)
    except Exception as adapted:
        wrapped = sa_exc.DBAPIError.instance(
            "update accounts set balance_cents = balance_cents - $1 where id = $2",
            (100, 7),
            adapted,
            DBAPI.Error,
            connection_invalidated=invalidated,
        )
        return raised_from(wrapped, adapted)
    raise AssertionError("the dialect did not translate the error")


def pg_error(cls: type[asyncpg.PostgresError], message: str) -> asyncpg.PostgresError:
    return cls(message)


@pytest.mark.parametrize(
    ("error", "sqlstate"),
    [
        (pg_error(asyncpg.exceptions.DeadlockDetectedError, "deadlock detected"), "40P01"),
        (pg_error(asyncpg.exceptions.SerializationError, "could not serialize access"), "40001"),
        (pg_error(asyncpg.exceptions.TooManyConnectionsError, "too many clients"), "53300"),
        (pg_error(asyncpg.exceptions.AdminShutdownError, "terminating connection"), "57P01"),
        (pg_error(asyncpg.exceptions.CrashShutdownError, "crash of another process"), "57P02"),
        (pg_error(asyncpg.exceptions.CannotConnectNowError, "the database is starting"), "57P03"),
        (pg_error(asyncpg.exceptions.ConnectionFailureError, "connection failure"), "08006"),
    ],
)
def test_server_errors_worth_another_try_are_transient_raw_and_wrapped(
    error: asyncpg.PostgresError, sqlstate: str
) -> None:
    assert sqlstate_of(error) == sqlstate
    assert is_transient(error)
    wrapped = through_sqlalchemy(error)
    assert isinstance(wrapped, sa_exc.DBAPIError)
    assert sqlstate_of(wrapped) == sqlstate
    assert is_transient(wrapped)


@pytest.mark.parametrize(
    ("error", "sqlstate"),
    [
        (pg_error(asyncpg.exceptions.UniqueViolationError, "duplicate key"), "23505"),
        (pg_error(asyncpg.exceptions.CheckViolationError, "violates check"), "23514"),
        (pg_error(asyncpg.exceptions.UndefinedTableError, 'relation "x" does not exist'), "42P01"),
        (pg_error(asyncpg.exceptions.InvalidCatalogNameError, 'database "x" does not'), "3D000"),
        (pg_error(asyncpg.exceptions.InvalidPasswordError, "password authentication"), "28P01"),
        (pg_error(asyncpg.exceptions.QueryCanceledError, "statement timeout"), "57014"),
        (pg_error(asyncpg.exceptions.ProtocolViolationError, "protocol violation"), "08P01"),
    ],
)
def test_bad_data_bad_sql_and_bad_config_are_permanent(
    error: asyncpg.PostgresError, sqlstate: str
) -> None:
    assert sqlstate_of(error) == sqlstate
    assert not is_transient(error)
    assert not is_transient(through_sqlalchemy(error))


def test_connection_terminated_mid_statement_is_transient() -> None:
    # What asyncpg raises when PostgreSQL restarts under a running statement.
    lost = raised_from(
        asyncpg.exceptions.ConnectionDoesNotExistError(
            "connection was closed in the middle of operation"
        ),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator"),
    )
    assert isinstance(lost, Exception)
    assert is_transient(lost)
    wrapped = through_sqlalchemy(lost, invalidated=True)
    assert is_transient(wrapped)
    assert sqlstate_of(wrapped) == "08003"


def test_closed_connection_is_transient_but_other_interface_errors_are_not() -> None:
    closed = asyncpg.exceptions.InterfaceError(
        "cannot call Connection.copy_records_to_table(): connection is closed"
    )
    assert is_transient(closed)
    assert is_transient(through_sqlalchemy(closed, invalidated=True))
    # Bad data for a query argument is the job's input, not a lost server.
    bad_argument = asyncpg.exceptions.DataError("invalid input for query argument $1: 'x'")
    assert not is_transient(bad_argument)
    busy = asyncpg.exceptions.InterfaceError(
        "cannot perform operation: another operation is in progress"
    )
    assert not is_transient(busy)


def test_invalidated_connection_without_sqlstate_is_transient() -> None:
    gone = through_sqlalchemy(
        asyncpg.exceptions.InterfaceError("connection is closed"), invalidated=True
    )
    assert isinstance(gone, sa_exc.DBAPIError) and gone.connection_invalidated
    assert is_transient(gone)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 5432)"),
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        # asyncpg connecting to a unix socket that PostgreSQL removed while restarting.
        FileNotFoundError(errno.ENOENT, "No such file or directory"),
        OSError(errno.EHOSTUNREACH, "No route to host"),
        TimeoutError(),
        socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
        redis.exceptions.ConnectionError("Error 111 connecting to localhost:6379."),
        redis.exceptions.TimeoutError("Timeout reading from socket"),
        redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
        sa_exc.TimeoutError("QueuePool limit of size 5 overflow 5 reached"),
    ],
)
def test_lost_or_refused_connections_are_transient(error: BaseException) -> None:
    assert is_transient(error)
    # However deep a job's own wrapping puts it.
    assert is_transient(raised_from(RuntimeError("loading failed"), error))


@pytest.mark.parametrize(
    "error",
    [
        # A missing input file names the file: the job's input, not the network.
        FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/inbox/a.csv"),
        PermissionError(errno.EACCES, "Permission denied", "/data/inbox/a.csv"),
        ValueError("invalid literal for int() with base 10: 'x'"),
        KeyError("balance_cents"),
        redis.exceptions.ResponseError("WRONGTYPE Operation against a key"),
        redis.exceptions.AuthenticationError("invalid password"),
    ],
)
def test_bugs_and_input_problems_are_permanent(error: BaseException) -> None:
    assert not is_transient(error)


@pytest.mark.parametrize(
    "cls",
    [
        InvalidPayload,
        UnknownDataset,
        PathNotAllowed,
        InputFileError,
        TooManyRejects,
        JobTimeout,
        UnexpectedError,
    ],
)
def test_permanent_errors_are_never_retried_whatever_caused_them(cls: type[EtlError]) -> None:
    assert issubclass(cls, PermanentError)
    assert not is_transient(cls())
    # Even when raised while handling a lost connection, the job's verdict stands.
    assert not is_transient(raised_from(cls(), ConnectionResetError()))


def test_transient_error_is_transient() -> None:
    assert is_transient(TransientError())


def test_each_error_defaults_to_its_docstring_and_keeps_context() -> None:
    assert str(TooManyRejects()) == "Too many rows were rejected; nothing was loaded."
    assert str(UnknownDataset()) == "No such dataset."
    error = InputFileError("cannot read inbox/a.csv: no such file", path="inbox/a.csv")
    assert error.message == "cannot read inbox/a.csv: no such file"
    assert error.context == {"path": "inbox/a.csv"}


def test_describe_gives_the_driver_error_in_one_line_without_sql_or_parameters() -> None:
    deadlock = asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
    wrapped = through_sqlalchemy(deadlock)
    assert "\n" in str(wrapped) and "[SQL:" in str(wrapped)  # what SQLAlchemy's text looks like
    assert describe(wrapped) == "DeadlockDetectedError: deadlock detected"
    assert describe(ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed")) == (
        "ConnectionRefusedError: [Errno 111] Connect call failed"
    )
    assert describe(TooManyRejects("12 of 100 rows rejected (limit 5%)")) == (
        "12 of 100 rows rejected (limit 5%)"
    )
    assert describe(TimeoutError()) == "TimeoutError: no answer in time"
    assert describe(ValueError("first line\nsecond line")) == "ValueError: first line"
