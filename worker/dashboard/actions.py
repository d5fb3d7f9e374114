"""The dashboard's only writes: retry a failed job, cancel a waiting or running one; and signing in.

Each is a POST. From a page it needs a session (signed in with ETL_DASHBOARD_TOKEN) and that
session's CSRF token in the form; from a script, the token as a Bearer header (worker/dashboard/
auth.py). Anything else is refused with 403 before anything is done.
"""

from __future__ import annotations

from urllib.parse import parse_qs, quote

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from jobs.errors import EtlError
from worker.dashboard.auth import CSRF_FIELD, SESSION_COOKIE, SESSION_MAX_AGE_S, same_origin
from worker.dashboard.state import BadParameter, dashboard, render
from worker.dashboard.views import job_json

log = structlog.get_logger("worker.dashboard")

MAX_FORM_BYTES = 16 * 1024
CANCEL_WAIT_S = 3.0
"""How long a cancel from the dashboard waits for a running job to stop before showing its page."""


async def _form(request: Request) -> dict[str, str]:
    """The urlencoded form (the dashboard's forms have a few short fields)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise BadParameter("form too large")
    parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in parsed.items()}


def _refusal(request: Request, form: dict[str, str]) -> str | None:
    """Why this POST from a page may not act; None when it may."""
    auth = dashboard(request).auth
    if not auth.enabled:
        return "actions are disabled: the dashboard was started without ETL_DASHBOARD_TOKEN"
    if not same_origin(request):
        return "refused: the request comes from another site"
    session = auth.session_of(request)
    if session is None:
        return "sign in with the dashboard token first"
    if not auth.csrf_matches(session, form.get(CSRF_FIELD, "")):
        return "refused: the form's CSRF token is missing or wrong; reload the page and try again"
    return None


def _forbidden(request: Request, reason: str) -> Response:
    return render(request, "notice.html", status_code=403, title="Not allowed", message=reason)


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never `//host` or an absolute URL."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def login_page(request: Request) -> Response:
    return render(request, "login.html", next=_safe_next(request.query_params.get("next")))


async def login(request: Request) -> Response:
    auth = dashboard(request).auth
    form = await _form(request)
    if not auth.enabled:
        return _forbidden(request, "actions are disabled: ETL_DASHBOARD_TOKEN is not set")
    if not same_origin(request):
        return _forbidden(request, "refused: the request comes from another site")
    target = _safe_next(form.get("next"))
    if not auth.token_matches(form.get("token", "")):
        return render(request, "login.html", status_code=403, next=target, error="wrong token")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        auth.new_session(),
        max_age=SESSION_MAX_AGE_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def retry(request: Request) -> Response:
    reason = _refusal(request, await _form(request))
    if reason is not None:
        return _forbidden(request, reason)
    job_id = request.path_params["job_id"]
    try:
        handle = await dashboard(request).client.retry(job_id)
    except EtlError as exc:
        return render(
            request, "notice.html", status_code=409, title="Not retried", message=exc.message
        )
    log.info("dashboard.retried", job_id=job_id, new_job_id=handle.job_id, via="page")
    return RedirectResponse(f"/jobs/{quote(handle.job_id, safe='')}", status_code=303)


async def cancel(request: Request) -> Response:
    reason = _refusal(request, await _form(request))
    if reason is not None:
        return _forbidden(request, reason)
    job_id = request.path_params["job_id"]
    try:
        state = await dashboard(request).client.cancel(job_id, wait=CANCEL_WAIT_S)
    except EtlError as exc:
        return render(
            request, "notice.html", status_code=409, title="Not cancelled", message=exc.message
        )
    log.info("dashboard.cancelled", job_id=job_id, state=state.state, via="page")
    return RedirectResponse(f"/jobs/{quote(job_id, safe='')}", status_code=303)


def _api_refusal(request: Request) -> Response | None:
    auth = dashboard(request).auth
    if not auth.enabled:
        return JSONResponse({"error": "actions are disabled: ETL_DASHBOARD_TOKEN is not set"}, 403)
    if not auth.bearer_matches(request):
        return JSONResponse({"error": "send Authorization: Bearer <ETL_DASHBOARD_TOKEN>"}, 403)
    return None


async def api_retry(request: Request) -> Response:
    refused = _api_refusal(request)
    if refused is not None:
        return refused
    job_id = request.path_params["job_id"]
    try:
        handle = await dashboard(request).client.retry(job_id)
    except EtlError as exc:
        return JSONResponse({"error": exc.message}, 409)
    log.info("dashboard.retried", job_id=job_id, new_job_id=handle.job_id, via="api")
    return JSONResponse({"job_id": handle.job_id, "function": handle.function, "retry_of": job_id})


async def api_cancel(request: Request) -> Response:
    refused = _api_refusal(request)
    if refused is not None:
        return refused
    try:
        state = await dashboard(request).client.cancel(
            request.path_params["job_id"], wait=CANCEL_WAIT_S
        )
    except EtlError as exc:
        return JSONResponse({"error": exc.message}, 409)
    log.info("dashboard.cancelled", job_id=state.job_id, state=state.state, via="api")
    return JSONResponse(job_json(state))
