"""The finished-jobs index: what the dashboard lists without scanning Redis.

arq keeps a finished job's outcome under `arq:result:<id>` and nothing else, so listing finished
or failed jobs would mean a SCAN of every key (100,000 queued jobs are 100,000 keys). The worker
therefore records each job it finishes: its id, scored by its finish time, in a sorted set of the
queue's finished jobs and one per function (`etl:done:…`), failed ones also in `etl:failed:…`,
and its count and rows in a per-minute rollup (`etl:rate:…`) for the throughput chart. Entries
older than the results' lifetime (ETL_KEEP_RESULT) are trimmed as new ones arrive, and readers
skip ids whose result has expired meanwhile.

Jobs that fail before they start (an expired or unreadable record, tries exhausted after a crash)
never reach the worker's hooks, so they are not indexed: `etl failed`, which scans, lists them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from arq.utils import timestamp_ms
from redis.asyncio import Redis

from worker.errors import JobError
from worker.keys import done_key, failed_key, rate_key, result_key_prefix
from worker.serialization import deserialize

Outcome = Literal["complete", "failed", "cancelled"]

RATE_TTL_S = 2 * 3600
"""The rollup covers the last hour; a minute's hash is kept a little longer."""
MAX_ENTRIES = 500_000
"""Ids kept per sorted set at most, whatever ETL_KEEP_RESULT says (about 50 MB per set)."""

FAMILIES = {
    "import_file": "imports",
    "upsert_rows": "upserts",
    "export_dataset": "exports",
    "nightly_export": "exports",
    "transfer_funds": "transfers",
}


def family_of(function: str | None) -> str:
    """The job family a function belongs to, for the throughput chart."""
    return FAMILIES.get(function or "", "other")


def _number(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def rows_of(function: str | None, result: Any, kwargs: Mapping[str, Any]) -> int:
    """How many rows (or transfers) a complete job handled, from its result and arguments."""
    if not isinstance(result, dict):
        return 0
    if function == "import_file":
        return _number(result.get("rows_read"))
    if function == "export_dataset":
        return _number(result.get("rows"))
    if function == "nightly_export":
        exports = result.get("exports")
        if not isinstance(exports, list):
            return 0
        return sum(_number(e.get("rows")) for e in exports if isinstance(e, dict))
    if function == "transfer_funds":
        return sum(_number(result.get(k)) for k in ("applied", "rejected", "duplicate"))
    if function == "upsert_rows":
        rows = kwargs.get("rows")
        return len(rows) if isinstance(rows, list) else 0
    return 0


@dataclass(frozen=True, slots=True)
class Finished:
    """What the index keeps of one finished job."""

    job_id: str
    function: str | None
    finished_ms: int
    outcome: Outcome
    rows: int


def outcome_of(record: Mapping[str, Any]) -> Outcome:
    """A result record's outcome: complete, failed, or cancelled (failed with CancelledError)."""
    if record.get("s"):
        return "complete"
    error = record.get("r")
    return "cancelled" if isinstance(error, JobError) and error.is_cancellation else "failed"


def parse_finished(job_id: str, raw: bytes) -> Finished | None:
    """The index entry for a result record; None for one not in this service's JSON format."""
    try:
        record = deserialize(raw)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    function = record.get("f") if isinstance(record.get("f"), str) else None
    finished = record.get("ft")
    if isinstance(finished, bool) or not isinstance(finished, int | float):
        finished = timestamp_ms()
    outcome = outcome_of(record)
    kwargs = record.get("k")
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    rows = rows_of(function, record.get("r"), kwargs) if outcome == "complete" else 0
    return Finished(job_id, function, int(finished), outcome, rows)


async def record_finished(
    redis: Redis, *, queue_name: str, job_ids: Sequence[str], keep_s: int
) -> list[Finished]:
    """Index the jobs among `job_ids` that have a result (a job arq will retry has none)."""
    if not job_ids:
        return []
    raws = await redis.mget([result_key_prefix + job_id for job_id in job_ids])
    entries = [
        entry
        for job_id, raw in zip(job_ids, raws, strict=True)
        if raw is not None and (entry := parse_finished(job_id, raw)) is not None
    ]
    if not entries:
        return []
    # One ZADD per set and one HINCRBY per counter for the whole batch, not per job: the
    # worker indexes its finished jobs every few milliseconds, a burst's worth at a time.
    members: dict[str, dict[str, int]] = defaultdict(dict)
    counts: Counter[tuple[str, str]] = Counter()
    for entry in entries:
        keys = [done_key(queue_name), done_key(queue_name, entry.function or "?")]
        if entry.outcome == "failed":
            keys += [failed_key(queue_name), failed_key(queue_name, entry.function or "?")]
        for key in keys:
            members[key][entry.job_id] = entry.finished_ms
        minute = rate_key(queue_name, entry.finished_ms // 60_000)
        family = family_of(entry.function)
        counts[minute, f"{family}:jobs"] += 1
        counts[minute, f"{family}:rows"] += entry.rows
        if entry.outcome == "failed":
            counts[minute, f"{family}:failed"] += 1
    oldest = timestamp_ms() - keep_s * 1000
    async with redis.pipeline(transaction=False) as pipe:
        for (minute, name), amount in counts.items():
            pipe.hincrby(minute, name, amount)
        for minute in {minute for minute, _ in counts}:
            pipe.expire(minute, RATE_TTL_S)
        for key in sorted(members):
            pipe.zadd(key, members[key])
            pipe.zremrangebyscore(key, "-inf", f"({oldest}")
            pipe.zremrangebyrank(key, 0, -MAX_ENTRIES - 1)
            # The set goes when its newest entry would have been trimmed.
            pipe.expire(key, max(keep_s, 60))
        await pipe.execute()
    return entries
