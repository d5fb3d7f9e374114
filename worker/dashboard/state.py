"""What every handler shares: the dashboard's resources, its page context, its query parameters."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from arq.connections import ArqRedis
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from jobs.catalogue import BY_NAME
from worker.client import EtlClient
from worker.dashboard import views
from worker.dashboard.auth import CSRF_FIELD, Auth
from worker.dashboard.queries import Queries
from worker.settings import Settings

NAV = (
    ("/", "Overview"),
    ("/queued", "Queued"),
    ("/deferred", "Deferred"),
    ("/finished", "Finished"),
    ("/failed", "Failed"),
    ("/workers", "Workers"),
    ("/schedule", "Schedule"),
)


@dataclass(frozen=True, slots=True)
class Dashboard:
    """The app's resources, made in its lifespan: one Redis pool, one client, the templates."""

    settings: Settings
    redis: ArqRedis
    client: EtlClient
    queries: Queries
    auth: Auth
    templates: Jinja2Templates


def dashboard(request: Request) -> Dashboard:
    return cast(Dashboard, request.app.state.dashboard)


class BadParameter(ValueError):
    """A query parameter that cannot be used; the page answers 400 with this text."""


def int_param(request: Request, name: str, default: int, *, low: int = 1) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < low:
        raise BadParameter(f"{name}: expected a whole number of at least {low}, got {raw[:40]!r}")
    return int(raw)


def time_param(request: Request, name: str) -> datetime | None:
    """An ISO-8601 date-time (a time without offset is UTC), or None when absent."""
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        example = "2026-11-10T09:30"
        raise BadParameter(f"{name}: not a date-time ({example}), got {raw[:40]!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def function_param(request: Request) -> str | None:
    raw = request.query_params.get("function", "")
    if not raw:
        return None
    if raw not in BY_NAME:
        known = ", ".join(sorted(BY_NAME))
        raise BadParameter(f"function: unknown job {raw[:40]!r}; known: {known}")
    return raw


def page_context(request: Request, **values: Any) -> dict[str, Any]:
    """What every template gets: the queue, who may act (and the CSRF token), the helpers."""
    d = dashboard(request)
    session = d.auth.session_of(request)
    context: dict[str, Any] = {
        "queue": d.settings.queue_name,
        "redis_url": d.settings.redis_url_safe(),
        "now": datetime.now(UTC),
        "nav": NAV,
        "path": request.url.path,
        "actions_enabled": d.auth.enabled,
        "signed_in": session is not None,
        "csrf_field": CSRF_FIELD,
        "csrf": d.auth.csrf_token(session) if session is not None else "",
        "functions": sorted(BY_NAME),
        "v": views,
    }
    context.update(values)
    return context


def render(request: Request, name: str, status_code: int = 200, **values: Any) -> Response:
    d = dashboard(request)
    return d.templates.TemplateResponse(
        request, name, page_context(request, **values), status_code=status_code
    )
