"""The errors apps and operators meet: the client's, the `etl` command's, a job's failure read back.

The errors a job raises are in `jobs/errors.py`; these build on its `EtlError` (and
`ConfigError`), so each class's docstring is its default message there too.
"""

from __future__ import annotations

from jobs.errors import ConfigError, EtlError


class JobError(Exception):
    """A job's failure as read back from Redis."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message
        super().__init__(f"{kind}: {message}" if message else kind)


class JobFailed(JobError):
    """The job ran and failed; `kind` and `message` are the worker's error."""

    def __init__(self, job_id: str, error: JobError, *, tries: int) -> None:
        super().__init__(error.kind, error.message)
        self.job_id = job_id
        self.tries = tries


class JobNotFound(EtlError):
    """No such job: it never existed here, or its result has expired."""


class CannotRetry(EtlError):
    """This job cannot be retried."""


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
