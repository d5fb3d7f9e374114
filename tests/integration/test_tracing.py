"""Traces with the `otel` extra: one span per job, in the trace of the app that enqueued it, with
the SQLAlchemy, asyncpg and Redis spans under it; off (and the trace context harmless) without.

The spans go to the SDK's in-memory exporter; the tests that need opentelemetry skip without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix

from tests.support.worker_helpers import run_burst
from worker import tracing
from worker.client import EtlClient
from worker.settings import Settings

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Spans:
    """The spans one test's tracer provider recorded."""

    def __init__(self, provider: Any, exporter: Any) -> None:
        self.provider = provider
        self.exporter = exporter

    def all(self) -> list[Any]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> Any:
        (span,) = [s for s in self.all() if s.name == name]
        return span

    def ancestors(self, span: Any) -> list[int]:
        by_id = {s.context.span_id: s for s in self.all()}
        found = []
        while span.parent is not None:
            found.append(span.parent.span_id)
            span = by_id.get(span.parent.span_id)
            if span is None:
                break
        return found


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spans]:
    """An SDK tracer provider as the process's own, for this test only."""
    pytest.importorskip(
        "opentelemetry.sdk.trace", reason="the otel extra is not installed: pip install '.[otel]'"
    )
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # set_tracer_provider() can be called once per process; this provider is for this test only.
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield Spans(provider, exporter)
    tracing.stop()
    provider.shutdown()


def scope(span: Any) -> str:
    return str(span.instrumentation_scope.name)


async def test_a_job_is_one_span_in_the_enqueuers_trace_with_database_and_redis_spans(
    settings: Settings, redis: ArqRedis, clean_db: None, spans: Spans
) -> None:
    client = EtlClient.from_redis(redis, settings)
    rows = [{"external_id": "C1", "email": "a@example.com", "full_name": "A", "country": "FR"}]
    with spans.provider.get_tracer("app").start_as_current_span("POST /customers") as request:
        handle = await client.upsert_rows({"dataset": "customers", "rows": rows})
    # The context travels in the job's record; what apps and operators read leaves it out.
    record = json.loads(await redis.get(job_key_prefix + handle.job_id))
    assert set(record["k"][tracing.TRACE_KWARG]) == {"traceparent"}
    assert record["k"][tracing.TRACE_KWARG]["traceparent"].split("-")[1] == (
        f"{request.get_span_context().trace_id:032x}"
    )
    assert tracing.TRACE_KWARG not in (await client.status(handle.job_id)).kwargs

    worker = await run_burst(settings, redis)
    assert worker.jobs_complete == 1
    job = spans.named("job upsert_rows")
    assert job.context.trace_id == request.get_span_context().trace_id
    assert job.parent.span_id == request.get_span_context().span_id
    assert dict(job.attributes) == {
        "messaging.system": "arq",
        "etl.job.id": handle.job_id,
        "etl.job.function": "upsert_rows",
        "etl.job.try": 1,
        "etl.job.outcome": "complete",
    }
    assert job.status.is_ok

    under_job = [s for s in spans.all() if job.context.span_id in spans.ancestors(s)]
    scopes = {scope(s) for s in under_job}
    assert {
        "opentelemetry.instrumentation.sqlalchemy",
        "opentelemetry.instrumentation.asyncpg",
        "opentelemetry.instrumentation.redis",
    } <= scopes
    statements = " ".join(str(s.attributes.get("db.statement", "")) for s in under_job)
    assert "INSERT INTO customers" in statements or "insert into customers" in statements.lower()
    # arq's polling and health checks ran outside any span: no trace of their own.
    roots = [s for s in spans.all() if s.parent is None]
    assert [s.name for s in roots] == ["POST /customers"]


async def test_a_failed_job_span_has_an_error_status_and_the_error_type(
    settings: Settings, redis: ArqRedis, clean_db: None, spans: Spans
) -> None:
    job = await redis.enqueue_job(
        "upsert_rows", _queue_name=settings.queue_name, dataset="orders", rows=[]
    )
    assert job is not None
    await run_burst(settings, redis)
    span = spans.named("job upsert_rows")
    assert span.parent is None  # enqueued without a trace: the job's span starts one
    assert span.attributes["etl.job.outcome"] == "failed"
    assert span.attributes["error.type"] == "InvalidPayload"
    assert span.status.status_code.name == "ERROR"
    assert span.status.description == (
        "invalid payload: dataset: unknown dataset 'orders'; known: accounts, customers, transfers"
    )


async def test_the_worker_undoes_the_instrumentations_when_it_stops(
    settings: Settings, redis: ArqRedis, clean_db: None, spans: Spans
) -> None:
    await run_burst(settings, redis)
    before = len(spans.all())
    with spans.provider.get_tracer("app").start_as_current_span("later"):
        await redis.ping()
    assert [s.name for s in spans.all()[before:]] == ["later"]


async def test_without_opentelemetry_tracing_is_off_and_a_sent_context_is_harmless(
    settings: Settings, redis: ArqRedis, clean_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracing, "_api", lambda: None)  # as if the extra were not installed
    assert tracing.carrier() is None
    job = await redis.enqueue_job(
        "ping",
        _queue_name=settings.queue_name,
        touch_db=False,
        **{tracing.TRACE_KWARG: {"traceparent": TRACEPARENT}},
    )
    assert job is not None
    worker = await run_burst(settings, redis)
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    assert tracing._active is None


def test_start_says_why_tracing_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "_api", lambda: None)
    assert tracing.start(engine=None) == tracing.OFF_NOT_INSTALLED  # type: ignore[arg-type]


CONSOLE_RUN = f"""
import asyncio
from worker import tracing
from worker.db import create_engine
from worker.settings import Settings

async def main() -> None:
    engine = create_engine(Settings(_env_file=None))
    print(tracing.start(engine), flush=True)
    carrier = {{"traceparent": "{TRACEPARENT}"}}
    span = tracing.start_job("ping", job_id="j1", job_try=2, carrier=carrier)
    tracing.finish_job(span, status="complete", fields={{}})
    tracing.stop()
    await engine.dispose()

asyncio.run(main())
from opentelemetry import trace
trace.get_tracer_provider().shutdown()
"""


def test_otel_traces_exporter_alone_turns_tracing_on(settings: Settings) -> None:
    pytest.importorskip(
        "opentelemetry.sdk.trace", reason="the otel extra is not installed: pip install '.[otel]'"
    )
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "etl-test"}
    env["DATABASE_URL"] = settings.database_url or ""
    done = subprocess.run(
        [sys.executable, "-c", CONSOLE_RUN], env=env, capture_output=True, text=True, check=True
    )
    state, exported = done.stdout.split("\n", 1)
    assert state == "on (sqlalchemy, asyncpg, redis)"
    span = json.loads(exported)
    assert span["name"] == "job ping"
    assert span["context"]["trace_id"] == "0x" + TRACEPARENT.split("-")[1]
    assert span["parent_id"] == "0x" + TRACEPARENT.split("-")[2]
    assert span["attributes"]["etl.job.try"] == 2
    assert span["resource"]["attributes"]["service.name"] == "etl-test"
