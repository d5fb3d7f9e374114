"""Every Redis key the service writes beside arq's own (arq's are in `arq.constants`)."""

from __future__ import annotations

from arq.constants import (
    health_check_key_suffix,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)

PROGRESS_KEY_PREFIX = "etl:progress:"
"""`etl:progress:<job id>`: the running job's counters (JSON), refreshed every few seconds."""

RETRIED_KEY_PREFIX = "etl:retried:"
"""`etl:retried:<job id>`: the id of the job `etl retry` enqueued in place of this failed one."""

PROGRESS_TTL_S = 3600


def health_key(queue_name: str) -> str:
    """arq's health line for the workers of `queue_name`."""
    return queue_name + health_check_key_suffix


__all__ = [
    "PROGRESS_KEY_PREFIX",
    "PROGRESS_TTL_S",
    "RETRIED_KEY_PREFIX",
    "health_key",
    "in_progress_key_prefix",
    "job_key_prefix",
    "result_key_prefix",
    "retry_key_prefix",
]
