"""What `etl` exits with: 0 done, 1 failed, 2 refused (nothing was done), 130 interrupted."""

from __future__ import annotations

from jobs.errors import ConfigError, EtlError, InvalidPayload
from worker.errors import BadArgument

EXIT_OK = 0
EXIT_FAILED = 1
"""A job failed, a server did not answer, a check failed."""
EXIT_USAGE = 2
"""Bad arguments or configuration: nothing was enqueued."""
EXIT_INTERRUPTED = 130


def exit_code(exc: EtlError) -> int:
    if isinstance(exc, ConfigError | InvalidPayload | BadArgument):
        return EXIT_USAGE
    return EXIT_FAILED
