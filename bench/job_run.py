"""One job in a process of its own, so that the process's peak RSS is the job's alone.

    python -m bench.job_run --database-url URL --import-dir DIR --export-dir DIR --log-file F \\
        export --format csv [--compress] [--include accounts]
        import --path FILE --mode insert|upsert
        worker --redis-url URL --queue NAME --jobs N
        serve --redis-url URL --queue NAME --ready-file F [--max-jobs N]

`export` and `import` call the job as arq calls it (`worker.runner.execute` with the ctx the
worker builds); `worker` runs the service's arq worker in burst mode on a queue the parent filled
and reads no result (the parent reads them from Redis, as an app does); `serve` runs it until
SIGTERM (not in burst mode: for jobs that enqueue jobs), touching F once started. Each prints one
JSON line last: seconds (around the job, or the burst after the worker's start-up), peak_rss_mb (the
process's high-water mark), and result (the job's result), or error.

`run_child` is the parent's side: it starts the process and reads that line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.harness import BenchError, error_text
from jobs.exports.job import export_dataset
from jobs.imports.job import import_file
from jobs.spec import JobSpec
from jobs.storage import S3Url
from worker.context import CTX_KEY, AppContext
from worker.db import create_engine, create_sessionmaker
from worker.logging import configure_logging
from worker.runner import execute
from worker.settings import Settings


def peak_rss_mb() -> float:
    """The process's high-water resident set (VmHWM), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


async def call_job(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    engine = create_engine(settings)
    try:
        app = AppContext(settings=settings, engine=engine, sessionmaker=create_sessionmaker(engine))
        ctx = {CTX_KEY: app, "job_id": f"bench-{uuid.uuid4().hex[:12]}", "job_try": 1}
        spec: JobSpec[Any, Any] = export_dataset if args.job == "export" else import_file
        kwargs: dict[str, Any] = (
            {
                "format": args.format,
                "compress": args.compress,
                "include": args.include or [],
                "incremental": args.incremental,
            }
            if args.job == "export"
            else {"path": args.path, "mode": args.mode}
        )
        started = time.perf_counter()
        result = await execute(spec, ctx, dataset="customers", **kwargs)
        seconds = time.perf_counter() - started
    finally:
        await engine.dispose()
    return {"seconds": seconds, "result": result}


async def burst(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from bench.workers import project_worker, run_burst  # the worker's modules only here

    worker = project_worker(settings, queue_name=args.queue, max_jobs=1)
    return {"seconds": await run_burst(worker, jobs=args.jobs)}


async def serve(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """The service's worker, not in burst mode, until SIGTERM; `--ready-file` once started."""
    import signal

    from bench.workers import project_worker

    worker = project_worker(settings, queue_name=args.queue, max_jobs=args.max_jobs, burst=False)
    startup = worker.on_startup

    async def started(ctx: dict[str, Any]) -> None:
        if startup is not None:
            await startup(ctx)
        await asyncio.to_thread(Path(args.ready_file).touch)

    worker.on_startup = started
    main = asyncio.ensure_future(worker.main())
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    try:
        await main
    except asyncio.CancelledError:
        pass  # stopped by the parent
    finally:
        await worker.close()
    return {"seconds": 0.0, "complete": worker.jobs_complete, "failed": worker.jobs_failed}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.job_run")
    parser.add_argument("--database-url", required=True)
    # A directory or an s3:// URL (the store's endpoint and keys come from the environment).
    parser.add_argument("--import-dir", required=True)
    parser.add_argument("--export-dir", required=True)
    parser.add_argument("--log-file", required=True, type=Path)
    jobs = parser.add_subparsers(dest="job", required=True)
    export = jobs.add_parser("export")
    export.add_argument("--format", choices=("csv", "jsonl"), required=True)
    export.add_argument("--compress", action="store_true")
    export.add_argument("--include", choices=("accounts",), action="append")
    export.add_argument("--incremental", metavar="FEED")
    imports = jobs.add_parser("import")
    imports.add_argument("--path", required=True)
    imports.add_argument("--mode", choices=("insert", "upsert"), required=True)
    worker = jobs.add_parser("worker")
    worker.add_argument("--redis-url", required=True)
    worker.add_argument("--queue", required=True)
    worker.add_argument("--jobs", type=int, required=True)
    serving = jobs.add_parser("serve")
    serving.add_argument("--redis-url", required=True)
    serving.add_argument("--queue", required=True)
    serving.add_argument("--ready-file", required=True)
    serving.add_argument("--max-jobs", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    values: dict[str, Any] = {
        "DATABASE_URL": args.database_url,
        "ETL_IMPORT_DIR": args.import_dir,
        "ETL_EXPORT_DIR": args.export_dir,
        "LOG_FORMAT": "json",
    }
    if args.job in ("worker", "serve"):
        values["REDIS_URL"] = args.redis_url
    settings = Settings(**values)
    with args.log_file.open("a") as log:
        # The worker's start-up hook points logging at sys.stdout: the JSON line must stay alone.
        with contextlib.redirect_stdout(log):
            configure_logging("INFO", "json", stream=log)
            try:
                run = {"worker": burst, "serve": serve}.get(args.job, call_job)
                out = asyncio.run(run(settings, args))
            except Exception as exc:
                out = {"error": error_text(exc)}
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))
    return 1 if "error" in out else 0


async def run_child(
    *,
    url: str,
    import_dir: Path | S3Url,
    export_dir: Path | S3Url,
    log_file: Path,
    job: list[str],
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run `python -m bench.job_run ... JOB` and return its JSON line; BenchError if it failed.
    `env`: variables added to the child's environment (an S3 store's endpoint and keys)."""
    argv = [sys.executable, "-m", "bench.job_run", "--database-url", url,
            "--import-dir", str(import_dir), "--export-dir", str(export_dir),
            "--log-file", str(log_file), *job]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=None if env is None else {**os.environ, **env},
    )
    out, err = await proc.communicate()
    try:
        report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        detail = " ".join(err.decode(errors="replace").split())[-300:]
        raise BenchError(f"the {job[0]} process exited with {proc.returncode}: {detail}") from None
    if "error" in report:
        raise BenchError(str(report["error"]))
    return report


if __name__ == "__main__":
    sys.exit(main())
