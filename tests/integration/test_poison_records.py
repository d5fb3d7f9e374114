"""Job records with wrong types, as a non-Python app might write them, fail alone.

arq trusts the types in a record: `"t": "1"` or `"et": "x"` raised TypeError in its loop and ended
the worker, and the record stayed to end the next one. Each field is fuzzed here: the bad job
fails with one InvalidJob line, the ping enqueued after it completes, the worker stays up, and
`etl status` / `etl failed` still read everything.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix

from tests.support.etl_process import cli_env, etl
from tests.support.worker_helpers import run_burst
from worker.serialization import check_job_record
from worker.settings import Settings
from worker.status import list_failed, read_state

GOOD: dict[str, Any] = {"t": 1, "f": "ping", "a": [], "k": {"touch_db": False}, "et": 0}

# (field, bad value or None to drop it, the reason InvalidJob gives)
BAD_FIELDS = [
    ("t", "1", "'t' must be null or an integer of at least 1"),
    ("t", 1.5, "'t' must be null or an integer of at least 1"),
    ("t", 0, "'t' must be null or an integer of at least 1"),
    ("t", True, "'t' must be null or an integer of at least 1"),
    ("t", None, "'t' (try) is missing"),
    ("et", "x", "'et' must be a time in milliseconds since the epoch"),
    ("et", -5, "'et' must be a time in milliseconds since the epoch"),
    ("et", 1e300, "'et' must be a time in milliseconds since the epoch"),
    ("et", None, "'et' (enqueue time) is missing"),
    ("k", "text", "'k' must be an object"),
    ("k", [1, 2], "'k' must be an object"),
    ("a", {}, "'a' must be an array"),
    ("a", "x", "'a' must be an array"),
    ("f", 7, "'f' must be a non-empty string"),
    ("f", "", "'f' must be a non-empty string"),
    ("f", None, "'f' (function name) is missing"),
]


def record(field: str, value: Any) -> dict[str, Any]:
    bad = {**GOOD, "et": int(time.time() * 1000)}
    if value is None:
        bad.pop(field)
    else:
        bad[field] = value
    return bad


@pytest.mark.parametrize(("field", "value", "reason"), BAD_FIELDS)
def test_the_check_names_the_bad_field(field: str, value: Any, reason: str) -> None:
    with pytest.raises(Exception) as caught:
        check_job_record(record(field, value))
    assert type(caught.value).__name__ == "InvalidJob"
    assert str(caught.value) == f"invalid job record: {reason}"


def test_a_good_record_passes() -> None:
    check_job_record({**GOOD, "et": 1_767_225_600_000})
    check_job_record({**GOOD, "t": None, "et": 1_767_225_600_000})  # as arq's enqueue_job writes
    check_job_record({**GOOD, "et": 1_767_225_600_000.5})


async def put(redis: ArqRedis, queue: str, job_id: str, value: Any) -> None:
    await redis.psetex(job_key_prefix + job_id, 60_000, json.dumps(value).encode())
    await redis.zadd(queue, {job_id: int(time.time() * 1000)})


async def test_every_poison_record_fails_alone_and_the_worker_runs_on(
    settings: Settings,
    redis: ArqRedis,
    clean_db: None,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = settings.queue_name
    run = uuid.uuid4().hex[:8]
    ids = []
    for n, (field, value, _) in enumerate(BAD_FIELDS):
        ids.append(f"poison-{run}-{n}")
        await put(redis, queue, ids[-1], record(field, value))
    listed_id = f"poison-{run}-list"
    await put(redis, queue, listed_id, [1, 2, 3])

    # While they wait, `etl status` reads each of them.
    for job_id in [*ids, listed_id]:
        assert (await read_state(redis, job_id, queue_name=queue)).state == "queued"

    ping = await redis.enqueue_job("ping", _queue_name=queue, _defer_by=0.05, touch_db=False)
    assert ping is not None

    with caplog.at_level(logging.WARNING, logger="arq.worker"):
        worker = await run_burst(settings, redis)

    assert (worker.jobs_failed, worker.jobs_complete) == (len(BAD_FIELDS) + 1, 1)
    # One warning line each, with the reason and without arq's traceback.
    lines = [r for r in caplog.records if r.getMessage().startswith("deserializing job poison-")]
    assert len(lines) == len(BAD_FIELDS) + 1
    assert all(r.levelname == "WARNING" and r.exc_info is None for r in lines)
    assert any(r.getMessage().endswith("'k' must be an object") for r in lines)
    assert await ping.result(timeout=5) == {"pong": True, "database": False}
    for job_id, (_, _, reason) in zip(ids, BAD_FIELDS, strict=True):
        state = await read_state(redis, job_id, queue_name=queue)
        assert state.state == "failed"
        assert state.error is not None
        assert (state.error.kind, state.error.message) == (
            "InvalidJob",
            f"invalid job record: {reason}",
        )
    listed = await list_failed(redis, queue_name=queue)
    assert sorted(s.job_id for s in listed) == sorted([*ids, listed_id])
    # The operator's commands read them too.
    env = cli_env(settings, tmp_path)
    shown = await etl("failed", "--json", "--limit", "100", env=env, cwd=tmp_path)
    assert shown.code == 0, shown.stderr
    assert {j["job_id"] for j in json.loads(shown.stdout)} == {*ids, listed_id}
    k_not_object = ids[[reason for _, _, reason in BAD_FIELDS].index("'k' must be an object")]
    one = await etl("status", k_not_object, env=env, cwd=tmp_path)
    assert one.code == 0, one.stderr
    assert "InvalidJob: invalid job record: 'k' must be an object" in one.stdout


async def test_status_reads_a_result_record_with_wrong_types(
    settings: Settings, redis: ArqRedis
) -> None:
    """A result written by another app, `k` not an object and `t` a string: still shown."""
    from arq.constants import result_key_prefix

    odd = {"t": "x", "f": 5, "a": {}, "k": "text", "et": "x", "s": False, "r": "boom", "q": None}
    await redis.psetex(result_key_prefix + "odd-result", 60_000, json.dumps(odd).encode())
    state = await read_state(redis, "odd-result", queue_name=settings.queue_name)
    assert (state.state, state.function, state.kwargs, state.tries) == ("failed", None, {}, 1)
    assert state.error is not None and state.error.message == "boom"
