"""The JSON API under /api/: what the pages show, for scripts. Reads need nothing; the two actions
need `Authorization: Bearer <ETL_DASHBOARD_TOKEN>`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from worker.dashboard.details import job_details
from worker.dashboard.queries import PAGE_SIZE, Listing
from worker.dashboard.state import dashboard, function_param, int_param, time_param
from worker.dashboard.views import job_json, progress_of


def _listing(listing: Listing, *, with_arguments: bool = False) -> dict[str, Any]:
    return {
        "page": listing.page,
        "size": listing.size,
        "total": listing.total,
        "has_next": listing.has_next,
        "jobs": [_brief(s, with_arguments=with_arguments) for s in listing.states],
    }


def _brief(state: Any, *, with_arguments: bool) -> dict[str, Any]:
    out = job_json(state)
    if not with_arguments:
        out.pop("args", None)
        out.pop("kwargs", None)
        out.pop("result", None)
    return out


async def queues(request: Request) -> Response:
    q = dashboard(request).queries
    page, size = int_param(request, "page", 1), int_param(request, "size", PAGE_SIZE)
    workers = await q.workers()
    running, queued, deferred, recent = await asyncio.gather(
        q.running(workers),
        q.waiting("queued", page=page, size=size),
        q.waiting("deferred", page=page, size=size),
        q.finished(failed_only=False, size=size),
    )
    counts = await q.counts(in_progress=len(running))
    now = datetime.now(UTC)
    in_progress = []
    for job in running:
        bar = progress_of(job.state.progress, started_at=job.started_at, now=now)
        item = _brief(job.state, with_arguments=False)
        item.update(
            worker=f"{job.worker.host} pid {job.worker.pid}" if job.worker else None,
            started_at=job.started_at.isoformat() if job.started_at else None,
            rate_per_s=bar.rate if bar else None,
            eta_s=bar.eta_s if bar else None,
        )
        in_progress.append(item)
    return JSONResponse(
        {
            "queue": dashboard(request).settings.queue_name,
            "counts": {
                "queued": counts.queued,
                "deferred": counts.deferred,
                "in_progress": counts.in_progress,
                "failed": counts.failed,
                "finished_last_hour": counts.finished_last_hour,
            },
            "in_progress": in_progress,
            "queued": _listing(queued),
            "deferred": _listing(deferred),
            "recently_finished": _listing(recent),
        }
    )


async def job(request: Request) -> Response:
    after = int_param(request, "after", 0, low=0) or None
    details = await job_details(
        dashboard(request), request.path_params["job_id"], rejects_after=after
    )
    status = 404 if details.state.state == "not_found" else 200
    return JSONResponse(details.as_json(), status_code=status)


async def failed(request: Request) -> Response:
    return await _finished(request, failed_only=True)


async def finished(request: Request) -> Response:
    return await _finished(request, failed_only=False)


async def _finished(request: Request, *, failed_only: bool) -> Response:
    listing = await dashboard(request).queries.finished(
        failed_only=failed_only,
        function=function_param(request),
        since=time_param(request, "since"),
        until=time_param(request, "until"),
        page=int_param(request, "page", 1),
        size=int_param(request, "size", PAGE_SIZE),
    )
    return JSONResponse(_listing(listing, with_arguments=True))


async def workers(request: Request) -> Response:
    records = await dashboard(request).queries.workers()
    return JSONResponse({"workers": [w.as_json() for w in records]})


async def schedule(request: Request) -> Response:
    s = await dashboard(request).queries.schedule()
    return JSONResponse(
        {
            "entries": [
                {
                    "name": e.name,
                    "function": e.function,
                    "cron": e.cron,
                    "next_run": e.next_run.isoformat() if e.next_run else None,
                    "keep": e.keep,
                    "args": e.kwargs,
                }
                for e in s.entries
            ],
            "nightly_at_utc": s.nightly_at,
            "next_run": s.next_run.isoformat() if s.next_run else None,
            "next_job_id": s.next_job_id,
            "datasets": s.datasets,
            "keep": s.keep,
            "runs": [job_json(run) for run in s.runs],
            "files": {
                dataset: [
                    {
                        "name": f.path.name,
                        "bytes": f.bytes,
                        "modified_at": f.modified_at.isoformat(),
                        "kept": f.kept,
                    }
                    for f in files
                ]
                for dataset, files in s.files.items()
            },
        }
    )


async def throughput(request: Request) -> Response:
    t = await dashboard(request).queries.throughput()
    return JSONResponse(
        {
            "minutes": [m.isoformat() for m in t.minutes],
            "families": {
                name: {
                    "jobs_per_minute": series.jobs,
                    "failed_per_minute": series.failed,
                    "rows_per_second": [round(rows / 60, 3) for rows in series.rows],
                    "jobs_last_hour": series.jobs_total,
                    "rows_last_hour": series.rows_total,
                }
                for name, series in t.families.items()
            },
        }
    )
