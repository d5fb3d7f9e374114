"""OpenTelemetry traces, with the `otel` extra: a span per job, with the SQLAlchemy, asyncpg and
Redis instrumentations' spans under it, in the trace of the app that enqueued the job.

Off, and free, unless opentelemetry is installed and traces have somewhere to go: a tracer
provider the process already has (set by an app, or by `opentelemetry-instrument`), or exporters
named by OTEL_TRACES_EXPORTER (`console`, or `otlp` with its exporter package), which the worker
then sets up with the SDK. The import is tried once, at start-up; while tracing is off, the
runner's calls return at once.

The instrumentations only add spans under a job's (or an app's) span: arq's own polling, health
checks and cron would otherwise make a root trace of every Redis command, several a second.

The client puts the W3C trace context in the job's kwargs under TRACE_KWARG; the runner takes it
out before the payload is validated, and worker.status leaves it out of the arguments it shows.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

log = structlog.get_logger("worker.tracing")

TRACE_KWARG = "_trace"
"""The job kwarg carrying the enqueuer's trace context (`{"traceparent": ..., ...}`)."""

OFF_NOT_INSTALLED = "off: opentelemetry is not installed (pip install 'etl-worker[otel]')"
OFF_NOT_CONFIGURED = "off: no tracer provider set, and no exporter in OTEL_TRACES_EXPORTER"


@dataclass(frozen=True, slots=True)
class _Otel:
    """What tracing needs while it is on: the API's modules, the worker's tracer."""

    trace: Any
    context: Any
    propagate: Any
    tracer: Any
    instrumentors: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class JobSpan:
    span: Any
    token: object


_active: _Otel | None = None


@functools.cache
def _api() -> tuple[Any, Any] | None:
    """(opentelemetry.trace, opentelemetry.propagate), or None without the extra; tried once."""
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        return None
    return trace, propagate


def carrier() -> dict[str, str] | None:
    """The current span's context, to send with a job; None without opentelemetry or a span."""
    api = _api()
    if api is None:
        return None
    trace, propagate = api
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    out: dict[str, str] = {}
    propagate.inject(out)
    return out or None


def start(engine: AsyncEngine) -> str:
    """Turn tracing on for this worker if it can be; returns `on (...)` or `off: why`."""
    global _active
    if _api() is None:
        return OFF_NOT_INSTALLED
    from opentelemetry import context, propagate, trace

    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        provider = _provider_from_environment()
        if provider is None:
            return OFF_NOT_CONFIGURED
        trace.set_tracer_provider(provider)
    instrumentors = _instrument(engine, _children_only(provider))
    _active = _Otel(
        trace=trace,
        context=context,
        propagate=propagate,
        tracer=provider.get_tracer("worker.runner"),
        instrumentors=tuple(instrumentors.values()),
    )
    return f"on ({', '.join(instrumentors) or 'job spans only'})"


def stop() -> None:
    """Undo the instrumentations (they patch libraries process-wide)."""
    global _active
    otel, _active = _active, None
    for instrumentor in otel.instrumentors if otel is not None else ():
        with contextlib.suppress(Exception):
            instrumentor.uninstrument()


def _provider_from_environment() -> Any:
    """An SDK TracerProvider exporting to OTEL_TRACES_EXPORTER's exporters; None if none named
    (or none of them could be loaded)."""
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    names = [n for n in names if n != "none"]
    if not names:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.util._importlib_metadata import entry_points
    except ImportError:
        log.warning("tracing.no_sdk", reason="OTEL_TRACES_EXPORTER is set: install the otel extra")
        return None
    service = os.environ.get("OTEL_SERVICE_NAME") or "etl-worker"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporting = False
    for name in names:
        found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
        if not found:
            log.warning("tracing.unknown_exporter", exporter=name, hint="install its package")
            continue
        provider.add_span_processor(BatchSpanProcessor(found[0].load()()))
        exporting = True
    return provider if exporting else None


def _instrument(engine: AsyncEngine, provider: Any) -> dict[str, Any]:
    """The instrumentations installed, by name; a missing or failing one is skipped with a line."""
    done: dict[str, Any] = {}
    plans = (
        ("sqlalchemy", "opentelemetry.instrumentation.sqlalchemy", "SQLAlchemyInstrumentor"),
        ("asyncpg", "opentelemetry.instrumentation.asyncpg", "AsyncPGInstrumentor"),
        ("redis", "opentelemetry.instrumentation.redis", "RedisInstrumentor"),
    )
    for name, module, cls in plans:
        try:
            instrumentor = getattr(__import__(module, fromlist=[cls]), cls)()
            options: dict[str, Any] = {"tracer_provider": provider}
            if name == "sqlalchemy":
                # Declared for SQLAlchemy < 2.1; its engine events are the same in 2.1.
                options.update(engine=engine.sync_engine, skip_dep_check=True)
            instrumentor.instrument(**options)
        except Exception as exc:
            log.warning("tracing.instrumentation_skipped", instrumentation=name, error=repr(exc))
            continue
        done[name] = instrumentor
    return done


def start_job(function: str, *, job_id: str, job_try: int, carrier: object) -> JobSpan | None:
    """Open the job's span (child of the enqueuer's, if it sent one) and make it current."""
    otel = _active
    if otel is None:
        return None
    parent = otel.propagate.extract(carrier) if isinstance(carrier, Mapping) else None
    span = otel.tracer.start_span(
        f"job {function}",
        context=parent,
        kind=otel.trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "arq",
            "etl.job.id": job_id,
            "etl.job.function": function,
            "etl.job.try": job_try,
        },
    )
    return JobSpan(span, otel.context.attach(otel.trace.set_span_in_context(span)))


def finish_job(job: JobSpan | None, *, status: str, fields: Mapping[str, Any]) -> None:
    """Close the job's span with its outcome; a failure sets the span's status to ERROR."""
    otel = _active
    if job is None or otel is None:
        return
    span = job.span
    span.set_attribute("etl.job.outcome", status)
    if status == "failed":
        span.set_attribute("error.type", str(fields.get("error_type", "")))
        span.set_status(otel.trace.Status(otel.trace.StatusCode.ERROR, str(fields.get("error"))))
    span.end()
    otel.context.detach(job.token)


def _children_only(provider: Any) -> Any:
    """A tracer provider whose tracers start a span only inside another span (else a no-op one)."""
    from opentelemetry import trace

    class Tracer(trace.Tracer):
        def __init__(self, real: Any) -> None:
            self._real = real

        def start_span(self, name: str, context: Any = None, *args: Any, **kw: Any) -> Any:
            if not trace.get_current_span(context).get_span_context().is_valid:
                return trace.INVALID_SPAN
            return self._real.start_span(name, context, *args, **kw)

        @contextlib.contextmanager
        def start_as_current_span(  # type: ignore[override]
            self, name: str, context: Any = None, *args: Any, end_on_exit: bool = True, **kw: Any
        ) -> Iterator[Any]:
            span = self.start_span(name, context, *args, **kw)
            with trace.use_span(span, end_on_exit=end_on_exit) as current:
                yield current

    class Provider(trace.TracerProvider):
        def get_tracer(self, *args: Any, **kw: Any) -> Any:
            return Tracer(provider.get_tracer(*args, **kw))

    return Provider()
