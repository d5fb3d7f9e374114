"""The HTML pages, server-rendered, and the fragments the page script refreshes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from worker.dashboard.details import job_details
from worker.dashboard.queries import PAGE_SIZE, Waiting
from worker.dashboard.state import (
    dashboard,
    function_param,
    int_param,
    render,
    time_param,
)
from worker.dashboard.views import chart, progress_of

OVERVIEW_ROWS = 10


async def running_rows(request: Request) -> list[dict[str, object]]:
    """The jobs in progress with their progress bars, for the overview and its fragment."""
    q = dashboard(request).queries
    now = datetime.now(UTC)
    jobs = await q.running(await q.workers())
    return [
        {
            "job": job,
            "progress": progress_of(job.state.progress, started_at=job.started_at, now=now),
        }
        for job in jobs
    ]


async def overview(request: Request) -> Response:
    q = dashboard(request).queries
    workers = await q.workers()
    running, queued, deferred, recent, failed, schedule = await asyncio.gather(
        running_rows(request),
        q.waiting("queued", page=1, size=OVERVIEW_ROWS),
        q.waiting("deferred", page=1, size=OVERVIEW_ROWS),
        q.finished(failed_only=False, size=OVERVIEW_ROWS),
        q.finished(failed_only=True, size=OVERVIEW_ROWS),
        q.schedule(),
    )
    rates = await q.throughput()
    counts = await q.counts(in_progress=len(running))
    return render(
        request,
        "overview.html",
        counts=counts,
        running=running,
        queued=queued,
        deferred=deferred,
        recent=recent,
        failed=failed,
        workers=workers,
        schedule=schedule,
        jobs_chart=chart(rates, what="jobs"),
        rows_chart=chart(rates, what="rows"),
    )


async def running_fragment(request: Request) -> Response:
    return render(request, "_running.html", running=await running_rows(request))


async def counts_fragment(request: Request) -> Response:
    q = dashboard(request).queries
    running = await q.running(await q.workers())
    return render(request, "_counts.html", counts=await q.counts(in_progress=len(running)))


def waiting_page(which: Waiting) -> Callable[[Request], Awaitable[Response]]:
    async def page(request: Request) -> Response:
        listing = await dashboard(request).queries.waiting(
            which, page=int_param(request, "page", 1), size=int_param(request, "size", PAGE_SIZE)
        )
        return render(request, "waiting.html", which=which, listing=listing)

    page.__name__ = f"{which}_page"
    return page


async def finished_page(request: Request) -> Response:
    return await _finished(request, failed_only=False)


async def failed_page(request: Request) -> Response:
    return await _finished(request, failed_only=True)


async def _finished(request: Request, *, failed_only: bool) -> Response:
    function = function_param(request)
    since, until = time_param(request, "since"), time_param(request, "until")
    listing = await dashboard(request).queries.finished(
        failed_only=failed_only,
        function=function,
        since=since,
        until=until,
        page=int_param(request, "page", 1),
        size=int_param(request, "size", PAGE_SIZE),
    )
    filters = {
        "function": function or "",
        "since": since.strftime("%Y-%m-%dT%H:%M") if since else "",
        "until": until.strftime("%Y-%m-%dT%H:%M") if until else "",
    }
    return render(
        request,
        "finished.html",
        failed_only=failed_only,
        listing=listing,
        filters=filters,
    )


async def job_page(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    after = int_param(request, "after", 0, low=0) or None
    details = await job_details(dashboard(request), job_id, rejects_after=after)
    status = 404 if details.state.state == "not_found" else 200
    return render(request, "job.html", status_code=status, d=details, job_id=job_id)


async def job_fragment(request: Request) -> Response:
    details = await job_details(
        dashboard(request), request.path_params["job_id"], rejects_after=None
    )
    return render(request, "_job_state.html", d=details)


async def workers_page(request: Request) -> Response:
    return render(request, "workers.html", workers=await dashboard(request).queries.workers())


async def schedule_page(request: Request) -> Response:
    return render(request, "schedule.html", schedule=await dashboard(request).queries.schedule())
