"""Every Redis key the service writes beside arq's own (arq's are in `arq.constants`)."""

from __future__ import annotations

from arq.constants import (
    abort_jobs_ss,
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

NIGHTLY_SUCCESS_KEY_PREFIX = "etl:nightly-success:"
"""`etl:nightly-success:<queue>`: Unix time the nightly export last completed (worker.metrics)."""

PROGRESS_TTL_S = 3600

WORKERS_KEY_PREFIX = "etl:workers:"
"""`etl:workers:<queue>`: a hash of the queue's worker processes, one JSON record per worker id."""

DONE_KEY_PREFIX = "etl:done:"
"""`etl:done:<queue>` (and `…:fn:<function>`): finished jobs' ids scored by finish time (ms)."""

FAILED_KEY_PREFIX = "etl:failed:"
"""`etl:failed:<queue>` (and `…:fn:<function>`): failed jobs' ids scored by finish time (ms)."""

RATE_KEY_PREFIX = "etl:rate:"
"""`etl:rate:<queue>:<minute>`: jobs, failures and rows finished in that minute, per job family."""


def health_key(queue_name: str) -> str:
    """arq's health line for the workers of `queue_name`."""
    return queue_name + health_check_key_suffix


def workers_key(queue_name: str) -> str:
    return WORKERS_KEY_PREFIX + queue_name


def done_key(queue_name: str, function: str | None = None) -> str:
    key = DONE_KEY_PREFIX + queue_name
    return key if function is None else f"{key}:fn:{function}"


def failed_key(queue_name: str, function: str | None = None) -> str:
    key = FAILED_KEY_PREFIX + queue_name
    return key if function is None else f"{key}:fn:{function}"


def rate_key(queue_name: str, minute: int) -> str:
    """`minute`: minutes since the epoch."""
    return f"{RATE_KEY_PREFIX}{queue_name}:{minute}"


__all__ = [
    "DONE_KEY_PREFIX",
    "FAILED_KEY_PREFIX",
    "NIGHTLY_SUCCESS_KEY_PREFIX",
    "PROGRESS_KEY_PREFIX",
    "PROGRESS_TTL_S",
    "RATE_KEY_PREFIX",
    "RETRIED_KEY_PREFIX",
    "WORKERS_KEY_PREFIX",
    "abort_jobs_ss",
    "done_key",
    "failed_key",
    "health_key",
    "in_progress_key_prefix",
    "job_key_prefix",
    "rate_key",
    "result_key_prefix",
    "retry_key_prefix",
    "workers_key",
]

CLAIM_KEY_PREFIX = "etl:claim:"
"""`etl:claim:<queue>:<name>`: who runs a once-only piece of work (a part of a parallel export): the
owner's id, kept for the claim's time (worker/handoff.py)."""
