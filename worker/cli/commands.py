"""What each `etl` command does; every handler is `(settings, args) -> exit code`.

`etl check` is in `health.py`; argument parsing is in `parser.py`, printing in `render.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from jobs.spec import AnySpec
from worker import embedded
from worker.cli.exits import EXIT_FAILED, EXIT_OK
from worker.cli.health import preflight, reaching, redis_only, servers
from worker.cli.payloads import payload_from_args
from worker.cli.render import (
    StatusLine,
    err,
    failed_lines,
    out,
    out_json,
    progress_line,
    reject_lines,
    result_lines,
    schedule_lines,
    state_lines,
    tries,
)
from worker.client import EtlClient, JobHandle
from worker.errors import BadArgument
from worker.schedules import load_schedules
from worker.settings import Settings
from worker.status import JobState, list_failed


@contextlib.asynccontextmanager
async def open_client(settings: Settings) -> AsyncIterator[EtlClient]:
    client = EtlClient(settings)
    with reaching("Redis", settings.redis_url):
        await client.open()
    try:
        with reaching("Redis", settings.redis_url):
            yield client
    finally:
        await client.close()


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from worker.migrate import upgrade_to_head

    settings = servers(settings)
    assert settings.database_url is not None
    with reaching("PostgreSQL", settings.database_url):
        head = upgrade_to_head(settings.database_url, settings)
    out(f"database {settings.database_url_safe()} is at revision {head} (head)")
    return EXIT_OK


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    load_schedules(settings)  # a bad schedules file stops it here, in one line, before anything
    settings = servers(settings)
    asyncio.run(preflight(settings))
    asyncio.run(run_worker(settings, burst=args.burst))
    return EXIT_OK


async def run_worker(settings: Settings, *, burst: bool) -> None:
    from arq.worker import Worker

    from worker.main import build_worker_settings

    # arq's Worker directly, not arq's CLI, which would reconfigure logging.
    worker = Worker(**build_worker_settings(settings), burst=burst)
    # Closing talks to Redis too (it removes the health key): a Redis gone by then is one line.
    with reaching("Redis", settings.redis_url):
        try:
            await worker.async_run()
        except asyncio.CancelledError:
            pass  # SIGINT / SIGTERM: arq cancelled its main task once running jobs had finished
        finally:
            await worker.close()


def cmd_embedded_stop(settings: Settings, args: argparse.Namespace) -> int:
    stopped = embedded.stop(settings)
    if stopped:
        out(f"stopped the embedded {' and '.join(sorted(stopped))} under {settings.state_dir}")
    else:
        out(f"no embedded server was running under {settings.state_dir}")
    return EXIT_OK


def cmd_enqueue(settings: Settings, args: argparse.Namespace) -> int:
    spec, payload = payload_from_args(args)
    if args.timeout is not None and not args.wait:
        raise BadArgument("--timeout: only with --wait")
    if args.replace_failed and args.job_id is None:
        raise BadArgument("--replace-failed: only with --job-id (a new id holds no failed job)")
    if getattr(args, "legacy_path", None) is not None:
        err(
            "etl: --file is deprecated for `etl enqueue import`: use --path (a file in the "
            "worker's import directory; --file reads a local file in other commands)"
        )
    return asyncio.run(enqueue(redis_only(settings), spec, payload, args))


async def enqueue(
    settings: Settings, spec: AnySpec, payload: BaseModel, args: argparse.Namespace
) -> int:
    async with open_client(settings) as client:
        handle = await client.enqueue(
            spec, payload, _job_id=args.job_id, replace_failed=args.replace_failed
        )
        if not handle.created:
            err(f"a job with id {handle.job_id} already exists: not enqueued again")
        if handle.replaced:
            err(f"the failed job {handle.job_id} was replaced: enqueued again under its id")
        if not args.wait:
            if args.json:
                out_json(
                    {
                        "job_id": handle.job_id,
                        "function": spec.name,
                        "created": handle.created,
                        "replaced": handle.replaced,
                    }
                )
            else:
                out(handle.job_id)
            return EXIT_OK
        if not args.json:
            err(f"enqueued {spec.name} as job {handle.job_id}; waiting for it")
        return await wait_for(handle, give_up_s=args.timeout, as_json=args.json)


async def wait_for(handle: JobHandle[Any], *, give_up_s: float | None, as_json: bool) -> int:
    """Wait for the job; print its result (exit 0), or its error (exit 1): on stderr, and with
    `as_json` as a JSON object on stdout too."""
    line = StatusLine()
    started = time.monotonic()
    while True:
        state = await handle.status()
        elapsed = time.monotonic() - started
        if state.finished or state.state == "not_found":
            break
        if give_up_s is not None and elapsed >= give_up_s:
            line.clear()
            return not_complete(state, as_json=as_json, gave_up_s=give_up_s)
        if line.enabled and elapsed >= 1.0:
            # Long jobs show they are alive and how far they got.
            line.show(progress_line(state, elapsed))
        await asyncio.sleep(0.25)
    line.clear()
    if state.state != "complete":
        return not_complete(state, as_json=as_json)
    if as_json:
        out_json(state.result)
    else:
        out(f"job {handle.job_id} ({state.function}) complete")
        for text in result_lines(state.result):
            out(text)
    return EXIT_OK


def not_complete(state: JobState, *, as_json: bool, gave_up_s: float | None = None) -> int:
    """Why a waited-for job has no result, on stderr; with `as_json`, as an object on stdout."""
    job_id = state.job_id
    status: str = state.state
    if gave_up_s is not None:
        status = "timed_out"
        text = (
            f"job {job_id} still {state.state} after {gave_up_s:g} s; "
            f"follow it with `etl status {job_id}`"
        )
    elif state.state == "not_found":
        text = f"job {job_id} disappeared: its result expired or Redis was flushed"
    elif state.state == "cancelled":
        text = f"job {job_id} ({state.function}) was cancelled"
    else:
        text = f"job {job_id} ({state.function}) failed after {tries(state)}: {state.error}"
    err(text)
    if as_json:
        document: dict[str, Any] = {"status": status, "job_id": job_id, "function": state.function}
        if state.error is not None:
            document.update(
                error_type=state.error.kind, error=state.error.message, tries=state.tries
            )
        else:
            document.update(state=state.state, error=text)
        out_json(document)
    return EXIT_FAILED


def cmd_schedules(settings: Settings, args: argparse.Namespace) -> int:
    entries = load_schedules(settings)
    now = datetime.now(UTC)
    if args.json:
        out_json([entry.as_json(now) for entry in entries])
        return EXIT_OK
    for line in schedule_lines(entries, now=now, source=settings.schedules_file):
        out(line)
    return EXIT_OK


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(status(redis_only(settings), args.job_id, as_json=args.json))


async def status(settings: Settings, job_id: str, *, as_json: bool) -> int:
    async with open_client(settings) as client:
        state = await client.status(job_id)
    if as_json:
        out_json(state.as_json())
    else:
        for line in state_lines(state):
            out(line)
    return EXIT_FAILED if state.state == "not_found" else EXIT_OK


def cmd_failed(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(failed(redis_only(settings), args))


async def failed(settings: Settings, args: argparse.Namespace) -> int:
    async with open_client(settings) as client:
        states = await list_failed(
            client.redis, queue_name=settings.queue_name, include_retried=args.all
        )
    states = states[: args.limit]
    if args.json:
        out_json([state.as_json() for state in states])
        return EXIT_OK
    if not states:
        out(f"no failed jobs kept on queue {settings.queue_name!r}")
        return EXIT_OK
    for state in states:
        for line in failed_lines(state):
            out(line)
    return EXIT_OK


def cmd_retry(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(retry(redis_only(settings), args.job_id, as_json=args.json))


async def retry(settings: Settings, job_id: str, *, as_json: bool) -> int:
    async with open_client(settings) as client:
        handle = await client.retry(job_id)
    if as_json:
        out_json({"job_id": handle.job_id, "function": handle.function, "retry_of": job_id})
    else:
        out(handle.job_id)
    return EXIT_OK


def cmd_rejects(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(rejects(settings, args))


async def rejects(settings: Settings, args: argparse.Namespace) -> int:
    client = EtlClient(settings)
    try:
        with reaching("PostgreSQL", settings.database_url):
            page = await client.rejects(args.import_id, after=args.after, limit=args.limit)
    finally:
        await client.close()
    if args.json:
        out_json(
            {
                "import_id": args.import_id,
                "rows": [row.model_dump(mode="json") for row in page.rows],
                "next_after": page.next_after,
            }
        )
        return EXIT_OK
    for line in reject_lines(page, import_id=args.import_id, after=args.after, limit=args.limit):
        out(line)
    return EXIT_OK


def cmd_cancel(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(cancel(redis_only(settings), args.job_id, wait=args.wait, as_json=args.json))


async def cancel(settings: Settings, job_id: str, *, wait: float, as_json: bool) -> int:
    async with open_client(settings) as client:
        state = await client.cancel(job_id, wait=wait)
    if as_json:
        out_json(state.as_json(with_arguments=False))
    if state.state != "cancelled":
        err(
            f"job {job_id} ({state.function}) was asked to stop but is still "
            f"{state.state.replace('_', ' ')} after {wait:g} s; it stops at its next await, "
            "or before it runs again"
        )
        return EXIT_FAILED
    if not as_json:
        out(f"job {job_id} ({state.function}) cancelled")
    return EXIT_OK


def cmd_dashboard(settings: Settings, args: argparse.Namespace) -> int:
    from worker.dashboard.server import serve

    return serve(redis_only(settings), host=args.host, port=args.port)


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from worker import demo
    from worker.migrate import upgrade_to_head

    settings = servers(settings)
    asyncio.run(preflight(settings))
    assert settings.database_url is not None
    with reaching("PostgreSQL", settings.database_url):
        upgrade_to_head(settings.database_url)
    code = EXIT_OK
    try:
        summary = asyncio.run(demo.scenario(settings, say=lambda text: err(f"demo: {text}")))
    except demo.DemoFailed as exc:
        summary, code = exc.summary, EXIT_FAILED
    if args.json:
        out_json(summary)
    else:
        for line in demo.summary_lines(summary):
            out(line)
    return code
