"""The dashboard's Starlette app: its resources, routes, security headers and error pages."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import jinja2
from arq.connections import ArqRedis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.client import EtlClient
from worker.dashboard import actions, api, pages
from worker.dashboard.auth import Auth
from worker.dashboard.files import download
from worker.dashboard.queries import Queries
from worker.dashboard.state import BadParameter, Dashboard
from worker.redis import connect
from worker.settings import Settings, redact_url

HERE = Path(__file__).parent
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response (static files may be cached)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if not (static and name == "cache-control"):
                        headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return Jinja2Templates(env=env)


ROUTES = [
    Route("/", pages.overview),
    Route("/queued", pages.waiting_page("queued")),
    Route("/deferred", pages.waiting_page("deferred")),
    Route("/finished", pages.finished_page),
    Route("/failed", pages.failed_page),
    Route("/workers", pages.workers_page),
    Route("/schedule", pages.schedule_page),
    Route("/jobs/{job_id}", pages.job_page),
    Route("/jobs/{job_id}/retry", actions.retry, methods=["POST"]),
    Route("/jobs/{job_id}/cancel", actions.cancel, methods=["POST"]),
    Route("/fragments/running", pages.running_fragment),
    Route("/fragments/counts", pages.counts_fragment),
    Route("/fragments/jobs/{job_id}", pages.job_fragment),
    Route("/download", download),
    Route("/login", actions.login_page),
    Route("/login", actions.login, methods=["POST"]),
    Route("/logout", actions.logout, methods=["POST"]),
    Route("/api/queues", api.queues),
    Route("/api/jobs/{job_id}", api.job),
    Route("/api/jobs/{job_id}/retry", actions.api_retry, methods=["POST"]),
    Route("/api/jobs/{job_id}/cancel", actions.api_cancel, methods=["POST"]),
    Route("/api/failed", api.failed),
    Route("/api/finished", api.finished),
    Route("/api/workers", api.workers),
    Route("/api/schedule", api.schedule),
    Route("/api/throughput", api.throughput),
    Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
]


def create_app(settings: Settings, *, redis: ArqRedis | None = None) -> Starlette:
    """The dashboard for `settings`' queue. With `redis`, it uses that pool (and leaves it open);
    otherwise it connects to REDIS_URL when it starts."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        auth, pages = Auth(settings.dashboard_token), templates()
        pool = redis if redis is not None else await connect(settings)
        client = EtlClient.from_redis(pool, settings)
        app.state.dashboard = Dashboard(
            settings=settings,
            redis=pool,
            client=client,
            queries=Queries(pool, settings),
            auth=auth,
            templates=pages,
        )
        try:
            yield
        finally:
            await client.close()
            if redis is None:
                await pool.aclose()

    async def bad_parameter(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc)}, 400)
        return PlainTextResponse(str(exc), 400)

    async def redis_failed(request: Request, exc: Exception) -> Response:
        where = redact_url(settings.redis_url or "")
        text = f"cannot read Redis at {where}: {type(exc).__name__}"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": text}, 503)
        return PlainTextResponse(text, 503)

    return Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={BadParameter: bad_parameter, RedisError: redis_failed},
        middleware=[Middleware(SecurityHeaders)],
    )
