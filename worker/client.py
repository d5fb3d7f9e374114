"""The client apps use to enqueue jobs: typed, validated before anything reaches Redis.

    async with EtlClient(get_settings()) as etl:
        job = await etl.import_file(ImportFilePayload(dataset="customers", path="customers.csv"))
        result = await job.result(timeout=600)  # an ImportResult, or JobFailed

`etl.enqueue(spec, payload)` enqueues any job of `jobs.catalogue`, typed by its spec; the jobs
apps enqueue also have a method of their name (`etl.ping()`). Jobs are written in arq's JSON job
format (see worker/serialization.py), so the worker runs them exactly as if arq's `enqueue_job`
had written them; one Lua script writes a whole batch in one round trip, skipping any job whose
id already exists, as arq does. Reads of PostgreSQL (`etl.rejects(import_id)`) are in reads.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

from arq.connections import ArqRedis
from arq.constants import expires_extra_ms
from arq.utils import timestamp_ms
from pydantic import BaseModel, ValidationError

from jobs.catalogue import BY_NAME, FUNCTIONS
from jobs.errors import ConfigError, IdempotencyConflict, InvalidPayload
from jobs.exports.job import export_dataset as export_dataset_spec
from jobs.imports.job import import_file as import_file_spec
from jobs.ping import ping as ping_spec
from jobs.spec import JobSpec
from jobs.transfers.job import transfer_funds as transfer_funds_spec
from jobs.upserts import upsert_rows as upsert_rows_spec
from worker import embedded
from worker.errors import CannotRetry, JobCancelled, JobFailed, JobNotFound
from worker.failover import WritePolicy, acknowledged_eval
from worker.keys import RETRIED_KEY_PREFIX, job_key_prefix, result_key_prefix
from worker.reads import DatabaseReads
from worker.redis import connect
from worker.requests import cancel_job, compact, job_bytes, retryable, validate
from worker.scripts import REPLACED, RETRY_SCRIPT, enqueue_call
from worker.settings import Settings, check_redis_url, get_settings
from worker.status import JobState, read_state

# The errors an app catches, importable from here too.
__all__ = [
    "BATCH_SIZE",
    "CannotRetry",
    "EtlClient",
    "JobFailed",
    "JobHandle",
    "JobMethod",
    "JobNotFound",
    "JobRequest",
    "job_bytes",
    "retryable",
    "validate",
]

PayloadT = TypeVar("PayloadT", bound=BaseModel)
ResultT = TypeVar("ResultT", bound=BaseModel)

SPEC_BY_PAYLOAD: dict[type[BaseModel], JobSpec[Any, Any]] = {
    spec.payload: spec for spec in FUNCTIONS
}

BATCH_SIZE = 500
"""Jobs per script call: big enough to make round trips rare, small enough not to stall Redis."""


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One job of a batch: a validated payload model, and optionally the job's id."""

    payload: BaseModel
    job_id: str | None = None


class JobHandle(Generic[ResultT]):
    """A job that was enqueued (or already existed under the id asked for)."""

    def __init__(
        self,
        client: EtlClient,
        job_id: str,
        *,
        function: str | None,
        result_model: type[ResultT] | None,
        created: bool,
    ) -> None:
        self._client = client
        self.job_id = job_id
        self.function = function
        self.created = created
        """False when a job with this id already existed: this handle points at that job."""
        self.replaced = False
        """True when it was written in place of a failed job of its id (`replace_failed`)."""
        self._result_model = result_model

    def __repr__(self) -> str:
        return f"<JobHandle {self.function} {self.job_id}>"

    async def status(self) -> JobState:
        return await self._client.status(self.job_id)

    # `timeout` as a parameter, like arq's Job.result, so an app can swap one for the other.
    async def result(
        self,
        timeout: float | None = None,  # noqa: ASYNC109
        *,
        poll_delay: float = 0.25,
    ) -> ResultT:
        """Wait for the job's result; JobFailed with the worker's error if it failed.

        TimeoutError after `timeout` seconds; JobNotFound if the job is not (or no longer) known.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = await self.status()
            if state.state == "complete":
                return self._parse(state)
            if state.state in ("failed", "cancelled"):
                assert state.error is not None
                failure = JobCancelled if state.state == "cancelled" else JobFailed
                raise failure(self.job_id, state.error, tries=state.tries)
            if state.state == "not_found":
                raise JobNotFound(
                    f"job {self.job_id} not found: never enqueued on this queue, "
                    "or its result expired (ETL_KEEP_RESULT)"
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.job_id} still {state.state} after {timeout:g} s")
            await asyncio.sleep(poll_delay)

    async def cancel(self, *, wait: float = 30.0) -> JobState:
        """`EtlClient.cancel` for this job."""
        return await self._client.cancel(self.job_id, wait=wait)

    def _parse(self, state: JobState) -> ResultT:
        model: type[BaseModel] | None = self._result_model
        if model is None and state.function is not None and state.function in BY_NAME:
            model = BY_NAME[state.function].result
        if model is None:
            raise JobNotFound(
                f"job {self.job_id} ran {state.function!r}, not one of this service's"
            )
        return cast(ResultT, model.model_validate(state.result))


class JobMethod(Generic[PayloadT, ResultT]):
    """A client method enqueueing one job: `etl.ping(payload)` is `etl.enqueue(ping, payload)`."""

    def __init__(self, spec: JobSpec[PayloadT, ResultT], client: EtlClient | None = None) -> None:
        self.spec = spec
        self._client = client

    def __get__(
        self, client: EtlClient | None, owner: type[EtlClient]
    ) -> JobMethod[PayloadT, ResultT]:
        return self if client is None else JobMethod(self.spec, client)

    async def __call__(
        self,
        payload: PayloadT | Mapping[str, Any] | None = None,
        *,
        _job_id: str | None = None,
        replace_failed: bool = False,
    ) -> JobHandle[ResultT]:
        """Enqueue the job; no payload means the payload model's defaults."""
        if self._client is None:
            raise TypeError(f"{self.spec.name}() is a method: call it on an EtlClient")
        payload = {} if payload is None else payload
        return await self._client.enqueue(
            self.spec, payload, _job_id=_job_id, replace_failed=replace_failed
        )


class EtlClient(DatabaseReads):
    """Enqueue jobs and read their outcome. Create once per app; close on shutdown.

    With no REDIS_URL set, the client finds (or starts) the embedded Redis under ETL_STATE_DIR,
    as the worker does, so both meet on the same queue.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        redis_url: str | None = None,
        queue_name: str | None = None,
    ) -> None:
        settings = settings or get_settings()
        update: dict[str, Any] = {}
        if redis_url is not None:
            try:
                update["redis_url"] = check_redis_url(redis_url)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if queue_name is not None:
            update["queue_name"] = queue_name
        self.settings = settings.model_copy(update=update)
        self.queue_name = self.settings.queue_name
        self._redis: ArqRedis | None = None
        self._owns_redis = True
        self._write_policy = WritePolicy.from_settings(self.settings)

    @classmethod
    def from_redis(cls, redis: ArqRedis, settings: Settings) -> EtlClient:
        """A client on a pool someone else owns (closing the client leaves the pool open)."""
        client = cls(settings)
        client._redis = redis
        client._owns_redis = False
        return client

    async def open(self) -> EtlClient:
        if self._redis is None:
            settings = self.settings
            if settings.redis_url is None:
                settings = await asyncio.to_thread(embedded.resolve, settings)
            self._redis = await connect(settings)
        return self

    async def close(self) -> None:
        if self._redis is not None and self._owns_redis:
            await self._redis.aclose()
        self._redis = None
        await self.close_database()

    async def __aenter__(self) -> EtlClient:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def redis(self) -> ArqRedis:
        if self._redis is None:
            raise RuntimeError("the client is not open: use `async with EtlClient(...)`")
        return self._redis

    # The jobs apps enqueue, by name: `etl.ping({"touch_db": False}, _job_id=...)`.
    import_file = JobMethod(import_file_spec)
    upsert_rows = JobMethod(upsert_rows_spec)
    export_dataset = JobMethod(export_dataset_spec)
    transfer_funds = JobMethod(transfer_funds_spec)
    ping = JobMethod(ping_spec)

    async def enqueue(
        self,
        spec: JobSpec[PayloadT, ResultT],
        payload: PayloadT | Mapping[str, Any],
        *,
        _job_id: str | None = None,
        replace_failed: bool = False,
    ) -> JobHandle[ResultT]:
        """Enqueue one job; its handle's result is the spec's result model.

        `_job_id` deduplicates: a second enqueue with the same id writes nothing and returns a
        handle on the first job (`created` False). `replace_failed=True` enqueues it in place of a
        *failed* job of that id, atomically (`replaced` True); any other job keeps its id.
        """
        model = validate(spec, payload)
        ((job_id, created, replaced),) = await self._write(
            [(spec.name, model, _job_id or uuid.uuid4().hex)], replace_failed=replace_failed
        )
        if not created:
            await self._same_job(job_id, spec, model)
        handle = JobHandle(
            self, job_id, function=spec.name, result_model=spec.result, created=created
        )
        handle.replaced = replaced
        return handle

    async def enqueue_many(
        self, requests: Iterable[JobRequest | BaseModel]
    ) -> list[JobHandle[Any]]:
        """Enqueue many jobs, a few hundred per round trip; handles in the order given.

        Every payload is validated first: one bad payload enqueues nothing.
        """
        planned: list[tuple[JobSpec[Any, Any], BaseModel, str]] = []
        for index, request in enumerate(requests):
            if isinstance(request, BaseModel):
                request = JobRequest(request)
            spec = SPEC_BY_PAYLOAD.get(type(request.payload))
            if spec is None:
                raise InvalidPayload(
                    f"invalid payload: job {index}: {type(request.payload).__name__} "
                    "is not a job payload"
                )
            try:
                model = validate(spec, request.payload)
            except InvalidPayload as exc:
                raise InvalidPayload(f"job {index}: {exc.message}") from None
            planned.append((spec, model, request.job_id or uuid.uuid4().hex))
        written = await self._write([(spec.name, model, job_id) for spec, model, job_id in planned])
        for (spec, model, _), (job_id, created, _) in zip(planned, written, strict=True):
            if not created:
                await self._same_job(job_id, spec, model)
        return [
            JobHandle(self, job_id, function=spec.name, result_model=spec.result, created=created)
            for (spec, _, _), (job_id, created, _) in zip(planned, written, strict=True)
        ]

    async def _write(
        self, jobs: Sequence[tuple[str, BaseModel, str]], *, replace_failed: bool = False
    ) -> list[tuple[str, bool, bool]]:
        """Each job's id, whether it was written, whether in place of a failed job of its id."""
        out: list[tuple[str, bool, bool]] = []
        for start in range(0, len(jobs), BATCH_SIZE):
            chunk = jobs[start : start + BATCH_SIZE]
            now = timestamp_ms()
            records = [
                (job_id, job_bytes(function, model.model_dump(mode="json"), enqueue_time_ms=now))
                for function, model, job_id in chunk
            ]
            script, keys, argv = enqueue_call(
                self.queue_name, records, now_ms=now, replace_failed=replace_failed
            )
            # Retried through a failover, and confirmed by replicas, as the settings ask; if it
            # still fails, the error names this chunk's ids and those of the chunks not sent.
            flags = await acknowledged_eval(
                self.redis,
                script,
                keys,
                argv,
                policy=self._write_policy,
                job_ids=[job_id for _, _, job_id in jobs[start:]],
            )
            out += [(i, bool(f), f == REPLACED) for (_, _, i), f in zip(chunk, flags, strict=True)]
        return out

    async def _same_job(self, job_id: str, spec: JobSpec[Any, Any], model: BaseModel) -> None:
        """IdempotencyConflict unless the job already held under `job_id` asked the same."""
        state = await self.status(job_id)
        if state.state == "not_found":
            return  # gone between the write and this read: nothing to compare with
        asked = model.model_dump(mode="json")
        held: Any = None
        if state.function == spec.name:
            try:
                held = spec.payload.model_validate(state.kwargs).model_dump(mode="json")
            except ValidationError:
                held = None
        if held != asked:
            raise IdempotencyConflict(
                f"job id {job_id!r} is already used by {state.function or 'another job'} "
                f"({state.state}) with other arguments: {compact(state.kwargs)}; "
                "use a new job id"
            )

    def job(self, job_id: str) -> JobHandle[Any]:
        """A handle on a job enqueued earlier (by this process or another)."""
        return JobHandle(self, job_id, function=None, result_model=None, created=False)

    async def status(self, job_id: str) -> JobState:
        return await read_state(self.redis, job_id, queue_name=self.queue_name)

    async def cancel(self, job_id: str, *, wait: float = 30.0) -> JobState:
        """Cancel a job: see `worker.requests.cancel_job`. JobNotFound, CannotCancel."""
        return await cancel_job(self.redis, job_id, settings=self.settings, wait=wait)

    async def retry(self, job_id: str) -> JobHandle[Any]:
        """Enqueue a failed job again, with its original arguments, under a new id."""
        spec, model = retryable(await self.status(job_id), queue_name=self.queue_name)
        new_id = uuid.uuid4().hex
        now = timestamp_ms()
        keys = [
            result_key_prefix + job_id,
            RETRIED_KEY_PREFIX + job_id,
            self.queue_name,
            job_key_prefix + new_id,
            result_key_prefix + new_id,
        ]
        argv: list[Any] = [
            expires_extra_ms,
            now,
            job_bytes(spec.name, model.model_dump(mode="json"), enqueue_time_ms=now),
            new_id,
        ]
        outcome = await self.redis.eval(RETRY_SCRIPT, len(keys), *keys, *argv)  # type: ignore[misc]
        code = int(outcome[0])
        if code == 0:
            raise JobNotFound(f"job {job_id} not found: its failure expired meanwhile")
        if code == 2:
            raise CannotRetry(f"job {job_id} was already retried as {outcome[1].decode()}")
        if code == 3:
            raise CannotRetry(f"job id {new_id} is taken; try again")
        return JobHandle(self, new_id, function=spec.name, result_model=spec.result, created=True)
