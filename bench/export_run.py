"""One `export_dataset` job in a process of its own, so its peak RSS is the export's alone.

`python -m bench.export_run --database-url URL --export-dir DIR --log-file F --format csv
[--compress]` prints one JSON object: seconds, rows, path and peak_rss_mb, or error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.harness import error_text
from jobs.exports.job import export_dataset
from jobs.models import ExportResult
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


async def export_once(settings: Settings, *, fmt: str, compress: bool) -> dict[str, Any]:
    engine = create_engine(settings)
    try:
        app = AppContext(settings=settings, engine=engine, sessionmaker=create_sessionmaker(engine))
        ctx = {CTX_KEY: app, "job_id": f"bench-{uuid.uuid4().hex[:12]}", "job_try": 1}
        started = time.perf_counter()
        raw = await execute(export_dataset, ctx, dataset="customers", format=fmt, compress=compress)
        seconds = time.perf_counter() - started
    finally:
        await engine.dispose()
    result = ExportResult.model_validate(raw)
    return {"seconds": seconds, "rows": result.rows, "path": result.path, "bytes": result.bytes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.export_run")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--export-dir", required=True, type=Path)
    parser.add_argument("--log-file", required=True, type=Path)
    parser.add_argument("--format", choices=("csv", "jsonl"), required=True)
    parser.add_argument("--compress", action="store_true")
    args = parser.parse_args(argv)
    with args.log_file.open("a") as log:
        configure_logging("INFO", "json", stream=log)
        settings = Settings(DATABASE_URL=args.database_url, ETL_EXPORT_DIR=args.export_dir)
        try:
            out = asyncio.run(export_once(settings, fmt=args.format, compress=args.compress))
        except Exception as exc:
            print(json.dumps({"error": error_text(exc)}))
            return 1
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
