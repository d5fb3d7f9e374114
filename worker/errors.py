"""The errors apps and operators meet: the client's, the `etl` command's, a job's failure read back.

The errors a job raises are in `jobs/errors.py`; these build on its `EtlError` (and
`ConfigError`), so each class's docstring is its default message there too.
"""

from __future__ import annotations

from jobs.errors import ConfigError, EtlError

CANCELLED_KIND = "CancelledError"
"""The error kind of a cancelled job's result: asyncio's CancelledError, as arq records it."""


class JobError(Exception):
    """A job's failure as read back from Redis."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message
        super().__init__(f"{kind}: {message}" if message else kind)

    @property
    def is_cancellation(self) -> bool:
        """arq records a job aborted while it ran (`etl cancel`) as failed with CancelledError."""
        return self.kind == CANCELLED_KIND


class JobFailed(JobError):
    """The job ran and failed; `kind` and `message` are the worker's error."""

    def __init__(self, job_id: str, error: JobError, *, tries: int) -> None:
        super().__init__(error.kind, error.message)
        self.job_id = job_id
        self.tries = tries


class JobCancelled(JobFailed):
    """The job was cancelled (`etl cancel`, `EtlClient.cancel`) before it finished."""


class JobNotFound(EtlError):
    """No such job: it never existed here, or its result has expired."""


class CannotRetry(EtlError):
    """This job cannot be retried."""


class CannotCancel(EtlError):
    """This job cannot be cancelled: it has finished."""


class UnreadableRecord(EtlError):
    """A Redis record that is not in this service's JSON job format."""


class Unreachable(EtlError):
    """A server did not answer."""


class SettingsInvalid(ConfigError):
    """The environment holds settings that are not valid."""


class BadArgument(EtlError):
    """An argument is not valid."""


class InvalidJob(EtlError):
    """The job's record in Redis is not a valid job (wrong or missing fields); it is not run."""


class NotAcknowledged(EtlError):
    """Redis did not acknowledge the enqueue in time: the jobs may or may not be queued."""

    def __init__(self, message: str, *, job_ids: list[str]) -> None:
        super().__init__(message)
        self.job_ids = job_ids
        """Enqueue these ids again (same payloads): an id already queued is not queued twice."""
