"""The Lua scripts the client runs in Redis: each writes what arq's `enqueue_job` would, atomically.

Key names are arq's (and `worker/keys.py`'s); job records are arq's JSON job format.
"""

from __future__ import annotations

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
