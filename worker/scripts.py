"""The Lua scripts the client runs in Redis: each writes what arq's `enqueue_job` would, atomically.

Key names are arq's (and `worker/keys.py`'s); job records are arq's JSON job format.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from arq.constants import expires_extra_ms

from worker.errors import CANCELLED_KIND
from worker.keys import (
    RETRIED_KEY_PREFIX,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
)

ENQUEUE_SCRIPT = """
local created = {}
for i = 1, (#KEYS - 1) / 2 do
  if redis.call('EXISTS', KEYS[2 * i], KEYS[2 * i + 1]) == 0 then
    redis.call('SET', KEYS[2 * i], ARGV[2 * i + 2], 'PX', ARGV[1])
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[2 * i + 1])
    created[i] = 1
  else
    created[i] = 0
  end
end
return created
"""
"""Write a batch of jobs, skipping any whose id exists, queued or finished (arq's rule too).

KEYS[1] is the queue, then each job's job key and result key; ARGV[1] the job keys' expiry (ms),
ARGV[2] the score, then each job's id and serialised job. Returns 1 (written) or 0 per job.
"""

ENQUEUE_REPLACING_FAILED_SCRIPT = """
local written = {}
for i = 1, (#KEYS - 1) / 4 do
  local job, result = KEYS[4 * i - 2], KEYS[4 * i - 1]
  local running, retried = KEYS[4 * i], KEYS[4 * i + 1]
  local answer = 0
  if redis.call('EXISTS', job, running) == 0 then
    local kept = redis.call('GET', result)
    if not kept then
      answer = 1
    else
      local ok, record = pcall(cjson.decode, kept)
      if ok and type(record) == 'table' and record['s'] == false then
        local error = record['r']
        if not (type(error) == 'table' and error['__error__'] == ARGV[3]) then
          redis.call('DEL', result, retried)
          answer = 2
        end
      end
    end
  end
  if answer > 0 then
    redis.call('SET', job, ARGV[2 * i + 3], 'PX', ARGV[1])
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[2 * i + 2])
  end
  written[i] = answer
end
return written
"""
"""Write a batch of jobs as ENQUEUE_SCRIPT does, but replace a *failed* job held under an id.

An id whose only trace is a failed result (kept ETL_KEEP_RESULT) gets its result (and its
`etl retry` marker) deleted and the new job written, in one step. An id held by a queued,
deferred or running job (its job or in-progress key exists), by a complete or cancelled one, or by
a result this service cannot read, is left as it is.
KEYS[1] is the queue, then each job's job key, result key, in-progress key and retried marker;
ARGV[1] the job keys' expiry (ms), ARGV[2] the score, ARGV[3] the error kind of a cancelled job,
then each job's id and serialised job. Returns per job 1 (written), 2 (written in place of a failed
job) or 0 (not written).
"""

REPLACED = 2
"""ENQUEUE_REPLACING_FAILED_SCRIPT's answer for a job written in place of a failed job."""


def enqueue_call(
    queue_name: str, jobs: Sequence[tuple[str, bytes]], *, now_ms: int, replace_failed: bool
) -> tuple[str, list[str], list[Any]]:
    """The script, keys and arguments that write `jobs` (id, serialised job) to the queue."""
    keys: list[str] = [queue_name]
    argv: list[Any] = [expires_extra_ms, now_ms]
    if replace_failed:
        argv.append(CANCELLED_KIND)
    for job_id, record in jobs:
        keys += [job_key_prefix + job_id, result_key_prefix + job_id]
        if replace_failed:
            keys += [in_progress_key_prefix + job_id, RETRIED_KEY_PREFIX + job_id]
        argv += [job_id, record]
    return (ENQUEUE_REPLACING_FAILED_SCRIPT if replace_failed else ENQUEUE_SCRIPT), keys, argv


RETRY_SCRIPT = """
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return {0} end
local prior = redis.call('GET', KEYS[2])
if prior then return {2, prior} end
if redis.call('EXISTS', KEYS[4], KEYS[5]) == 1 then return {3} end
if ttl > 0 then
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ttl)
else
  redis.call('SET', KEYS[2], ARGV[4])
end
redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[4])
return {1, ARGV[4]}
"""
"""Enqueue a failed job again under a new id, once: two operators retrying it enqueue one job.

KEYS: the failed job's result key, its retried marker, the queue, the new job key, the new result
key. ARGV: the new job's key expiry (ms), score, serialised job, id. Returns {0} when the failure
is gone, {2, id} when it was already retried as `id`, {3} when the new id is taken, {1, new id}
when enqueued.
"""

CANCEL_SCRIPT = """
if redis.call('EXISTS', KEYS[4]) == 1 then return 1 end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('ZADD', KEYS[6], ARGV[4], ARGV[1])
  return 2
end
local job = redis.call('GET', KEYS[2])
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not job and not score then return 0 end
if (job or '') ~= ARGV[2] then return 3 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[5])
redis.call('SET', KEYS[3], 'cancelled', 'PX', 1000)
redis.call('DEL', KEYS[3])
redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[5])
return 4
"""
"""Cancel a job: take a waiting one off the queue, or ask arq to abort a running one, atomically.

KEYS: the queue, the job key, its in-progress key, its result key, its retry key, arq's abort set.
ARGV: the job id, its record as read before (empty when none), the cancelled result to keep, now
(ms), the result's expiry (ms). Returns 1 when the job has a result (finished), 2 when it runs
(added to the abort set: its worker cancels it at its next poll), 0 when unknown, 3 when its
record changed since it was read (read it again), 4 when it was removed and its result written.
Setting the in-progress key (and deleting it again) makes a worker that is between its WATCH of
that key and its EXEC, about to start this job, fail its EXEC and leave the job.
"""
