"""What the worker hands every job: one frozen object under one key of arq's ctx."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from jobs.spec import JobConfig
from jobs.storage import located
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.metrics import Metrics
    from worker.workers import WorkerPresence

CTX_KEY = "etl"


@dataclass(frozen=True, slots=True)
class AppContext:
    """The worker's shared resources. Jobs open their own sessions from the sessionmaker."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    metrics: Metrics | None = None
    """Prometheus metrics, when ETL_METRICS_PORT is set; the runner reports each job to them."""
    presence: WorkerPresence | None = None
    """The worker's record in the worker registry (worker/workers.py)."""

    @property
    def job_config(self) -> JobConfig:
        """The settings jobs read, handed to them through their run handle."""
        s = self.settings
        s3 = s.s3_options()
        return JobConfig(
            import_dir=located(s.import_dir, s3),
            export_dir=located(s.export_dir, s3),
            export_keep=s.export_keep,
            nightly_datasets=tuple(s.nightly_dataset_names),
        )


def app_context(ctx: dict[str, Any]) -> AppContext:
    """The AppContext the worker put in arq's ctx at start-up."""
    app = ctx.get(CTX_KEY)
    if not isinstance(app, AppContext):
        raise RuntimeError("the worker's start-up hook has not run: ctx holds no AppContext")
    return app
