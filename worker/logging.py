"""structlog set-up: one pipeline for our lines and for stdlib ones (arq, SQLAlchemy, alembic)."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog
from structlog.typing import Processor

_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


def configure_logging(
    level: str = "INFO", fmt: Literal["json", "console"] = "json", *, stream: object = None
) -> None:
    """Configure structlog and the stdlib root logger to write one stream of lines.

    Safe to call again (arq's CLI replaces logging config after importing the settings, so the
    worker calls this once more at start-up).
    """
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            *_SHARED,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: tests use structlog.testing.capture_logs(), which must reconfigure.
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stdout)  # type: ignore[arg-type]
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    reclaim_arq_logger(level)
    logging.getLogger("sqlalchemy").setLevel("WARNING")
    logging.captureWarnings(True)


class _InvalidJobLine(logging.Filter):
    """arq logs a record it cannot read with a traceback; for one that is simply not a valid job
    (worker.serialization's check), a warning naming the reason says all there is to say."""

    def filter(self, record: logging.LogRecord) -> bool:
        from worker.errors import InvalidJob

        error = record.exc_info[1] if record.exc_info else None
        cause = error.__cause__ if error is not None else None
        if isinstance(cause, InvalidJob):
            record.msg = f"{record.getMessage()}: {cause.message}"
            record.args = None
            record.exc_info = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class _FailedJobLine(logging.Filter):
    """arq logs every failed job at error with a traceback. A failure the job's input explains
    (jobs.errors.is_expected) is a warning with no traceback, as the runner's `job.finished` is;
    an UnexpectedError's traceback is already in the runner's `job.crashed` line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from jobs.errors import UnexpectedError, is_expected

        error = record.exc_info[1] if record.exc_info else None
        if is_expected(error):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = None
        elif isinstance(error, UnexpectedError):
            record.exc_info = None
        return True


class _CompletedJobLine(logging.Filter):
    """arq's `← job_id:function ● result` line for a job that completed says less than the
    runner's `job.finished` line for the same run (status, duration, the job's counters), so it
    is dropped: one line per finished job, not two."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != ARQ_COMPLETED_FORMAT


ARQ_COMPLETED_FORMAT = "%6.2fs ← %s ● %s"
"""arq.worker's format for a completed job's line (arq 0.28)."""
_INVALID_JOB_LINE = _InvalidJobLine()
_FAILED_JOB_LINE = _FailedJobLine()
_COMPLETED_JOB_LINE = _CompletedJobLine()


def reclaim_arq_logger(level: str = "INFO") -> None:
    """Send arq's lines through the root handler (ours) rather than arq's own text handler.

    arq's CLI applies its dictConfig after importing WorkerSettings, giving the `arq` logger a
    handler of its own; the worker's start-up hook calls this to take those lines back.
    """
    named = logging.getLogger("arq")
    named.handlers.clear()
    named.propagate = True
    named.setLevel(level)
    worker_lines = logging.getLogger("arq.worker")
    for line_filter in (_INVALID_JOB_LINE, _FAILED_JOB_LINE, _COMPLETED_JOB_LINE):
        if line_filter not in worker_lines.filters:
            worker_lines.addFilter(line_filter)
