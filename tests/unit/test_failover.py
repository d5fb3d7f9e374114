"""The client's enqueue through a failover: what is retried, what is not, what WAIT adds."""

from __future__ import annotations

from typing import Any, cast

import pytest
from arq.connections import ArqRedis
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import AuthenticationError, ReadOnlyError
from redis.exceptions import ConnectionError as RedisConnectionError

from worker import failover
from worker.errors import NotAcknowledged
from worker.failover import WritePolicy, acknowledged_eval


class FakePipeline:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.commands: list[tuple[Any, ...]] = []

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def eval(self, *args: Any) -> None:
        self.commands.append(("EVAL", *args))

    def set(self, key: str, value: bytes, *, px: int) -> None:
        self.commands.append(("SET", key, value, px))

    def wait(self, replicas: int, timeout_ms: int) -> None:
        self.commands.append(("WAIT", replicas, timeout_ms))

    async def execute(self) -> list[Any]:
        self.redis.sent.append([c[0] for c in self.commands])
        outcome = self.redis.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return [[1], True, outcome]


class FakeRedis:
    """Answers each send with the next outcome: an error to raise, or flags (or WAIT's count)."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.sent: list[Any] = []

    async def eval(self, *args: Any) -> Any:
        self.sent.append(["EVAL"])
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def pipeline(self, *, transaction: bool) -> FakePipeline:
        assert transaction is False
        return FakePipeline(self)


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(failover.asyncio, "sleep", sleep)
    return slept


async def send(redis: FakeRedis, policy: WritePolicy) -> Any:
    return await acknowledged_eval(
        cast(ArqRedis, redis), "script", ["q", "k1", "r1"], [1, 2, "j1", b"x"],
        policy=policy, job_ids=["j1"],
    )  # fmt: skip


async def test_without_sentinel_or_wait_an_error_reaches_the_caller_at_once() -> None:
    redis = FakeRedis(RedisConnectionError("Connection refused"))
    with pytest.raises(RedisConnectionError):
        await send(redis, WritePolicy())
    assert redis.sent == [["EVAL"]]


async def test_errors_of_a_failover_are_retried_until_it_goes_through(
    no_sleep: list[float],
) -> None:
    redis = FakeRedis(
        RedisConnectionError("Connection closed by server."),
        MasterNotFoundError("No master found for 'mymaster'"),
        ReadOnlyError("You can't write against a read only replica."),
        OSError(111, "Connection refused"),
        [1],
    )
    assert await send(redis, WritePolicy(retry_for_s=20)) == [1]
    assert len(redis.sent) == 5
    # Backoff from 0.05-0.1 s up, each within its doubling ceiling.
    assert len(no_sleep) == 4
    assert all(0 < delay <= 0.1 * 2**n for n, delay in enumerate(no_sleep))


async def test_a_refused_password_is_not_retried() -> None:
    redis = FakeRedis(AuthenticationError("invalid username-password pair"), [1])
    with pytest.raises(AuthenticationError):
        await send(redis, WritePolicy(retry_for_s=20))
    assert len(redis.sent) == 1


async def test_wait_follows_the_script_and_a_fence_on_one_connection() -> None:
    redis = FakeRedis(0, 1)  # WAIT's count: none confirmed, then one
    assert await send(redis, WritePolicy(wait_replicas=1, wait_ms=500, retry_for_s=20)) == [1]
    # Both sends carry the fence: the second one's script writes nothing (the job exists).
    assert redis.sent == [["EVAL", "SET", "WAIT"], ["EVAL", "SET", "WAIT"]]


async def test_missing_confirmations_end_in_not_acknowledged_with_the_job_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter(range(0, 1000, 3))  # each look at the clock: 3 s later
    monkeypatch.setattr(failover.time, "monotonic", lambda: float(next(clock)))
    redis = FakeRedis(*[0] * 20)
    with pytest.raises(NotAcknowledged) as caught:
        await send(redis, WritePolicy(wait_replicas=2, wait_ms=500, retry_for_s=20))
    assert caught.value.job_ids == ["j1"]
    assert caught.value.message == (
        "enqueue of 1 job(s) not acknowledged within 20 s (WAIT: 0 of 2 replica(s) "
        "confirmed): they may or may not be queued; enqueue them again with the "
        "same job ids, which never queues a job twice"
    )
    assert len(redis.sent) == 7  # tries at 0, 3, … 18 s on the clock; 21 s is past the bound
