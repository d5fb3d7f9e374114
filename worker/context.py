"""What the worker hands every job: one frozen object under one key of arq's ctx."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from worker.settings import Settings

CTX_KEY = "etl"


@dataclass(frozen=True, slots=True)
class AppContext:
    """The worker's shared resources. Jobs open their own sessions or connections from these."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]


def app_context(ctx: dict[str, Any]) -> AppContext:
    """The AppContext the worker put in arq's ctx at start-up."""
    app = ctx.get(CTX_KEY)
    if not isinstance(app, AppContext):
        raise RuntimeError("the worker's start-up hook has not run: ctx holds no AppContext")
    return app
