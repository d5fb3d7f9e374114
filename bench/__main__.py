"""`python -m bench`: run the scenarios, print the table, write the JSON results."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import text

from bench import database, exports, imports, queue, transfers, upserts
from bench.context import BenchContext
from bench.harness import BenchError, Row, error_text, markdown_table, say, write_json
from bench.pgclient import PgClient
from jobs.errors import ConfigError
from worker import embedded
from worker.context import AppContext
from worker.db import create_engine, create_sessionmaker
from worker.logging import configure_logging
from worker.settings import Settings, get_settings

RESULTS = Path(__file__).resolve().parent / "results"
FAMILIES: dict[str, Callable[[BenchContext], Awaitable[list[Row]]]] = {
    "imports": imports.scenarios,
    "upserts": upserts.scenarios,
    "exports": exports.scenarios,
    "transfers": transfers.scenarios,
    "queue": queue.scenarios,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the ETL jobs against psql, pgbench and a bare arq worker, "
        "in a database of their own (DATABASE_URL's server, REDIS_URL's Redis).",
    )
    parser.add_argument("--rows", type=int, help="N, rows per import/upsert/export (1,000,000)")
    parser.add_argument("--rounds", type=int, help="runs of each side, alternating (3)")
    parser.add_argument(
        "--quick", action="store_true", help="10,000 rows, 1 round: proves it works, in CI"
    )
    parser.add_argument("--database", default="etl_bench", help="database to create (etl_bench)")
    parser.add_argument("--only", help="comma-separated families: " + ", ".join(FAMILIES))
    parser.add_argument("--pgbench-seconds", type=int, help="length of each pgbench run (10)")
    parser.add_argument("--output", type=Path, help="JSON file to write instead of bench/results")
    parser.add_argument(
        "--keep", action="store_true", help="keep the database and the work directory"
    )
    args = parser.parse_args(argv)
    args.rows = args.rows or (10_000 if args.quick else 1_000_000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.pgbench_seconds = args.pgbench_seconds or (2 if args.quick else 10)
    if args.rows < 1_000:
        parser.error("--rows: at least 1000")
    if args.rounds < 1 or args.pgbench_seconds < 1:
        parser.error("--rounds and --pgbench-seconds: at least 1")
    only = [name.strip() for name in (args.only or ",".join(FAMILIES)).split(",") if name.strip()]
    unknown = sorted(set(only) - set(FAMILIES))
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; known: {', '.join(FAMILIES)}")
    args.only = only
    return args


async def run(args: argparse.Namespace, server: Settings, workdir: Path) -> list[Row]:
    assert server.database_url is not None
    # SIGTERM cancels the run like Ctrl-C does, so the database is still dropped on the way out.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    name = database.check_name(args.database)
    url = database.database_url(server.database_url, name)
    say(f"bench: creating database {name} and migrating it")
    await database.recreate(server.database_url, name)
    try:
        await asyncio.to_thread(database.migrate, url)
        settings = server.model_copy(
            update={
                "database_url": url,
                "import_dir": workdir / "inbox",
                "export_dir": workdir / "exports",
                "log_format": "json",
            }
        )
        settings.import_dir.mkdir()
        settings.export_dir.mkdir()
        engine = create_engine(settings)
        try:
            # The pool's first connection is not a job's cost: open it before anything is timed.
            async with engine.connect() as conn:
                await conn.execute(text("select 1"))
            bench = BenchContext(
                rows=args.rows,
                rounds=args.rounds,
                pgbench_seconds=args.pgbench_seconds,
                settings=settings,
                app=AppContext(
                    settings=settings, engine=engine, sessionmaker=create_sessionmaker(engine)
                ),
                client=PgClient.from_url(url),
                workdir=workdir,
            )
            return await run_families(bench, args.only)
        finally:
            await engine.dispose()
    finally:
        if not args.keep:
            await database.drop(server.database_url, name)


async def run_families(bench: BenchContext, families: list[str]) -> list[Row]:
    rows: list[Row] = []
    for family in families:
        say(f"bench: {family}")
        try:
            rows += await FAMILIES[family](bench)
        except Exception as exc:  # one family's set-up failing must not lose the others' numbers
            say(f"bench: {family} FAILED {error_text(exc)}")
            rows.append(Row(scenario=family, rows=bench.rows, note=f"error: {error_text(exc)}"))
    return rows


def header(args: argparse.Namespace) -> str:
    return (
        f"N = {args.rows:,} rows, {args.rounds} round(s), medians; "
        f"{dt.date.today().isoformat()}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        server = embedded.resolve(get_settings())
    except (ConfigError, ValueError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="etl-bench-"))
    log_path = workdir / "bench.log"
    try:
        with log_path.open("w") as log:
            # Everything the service logs (the worker's start-up hook re-points logging at
            # sys.stdout) goes to the file, so the terminal shows only progress and results.
            with contextlib.redirect_stdout(log):
                configure_logging("INFO", "json", stream=log)
                try:
                    rows = asyncio.run(run(args, server, workdir))
                finally:
                    configure_logging("WARNING", "json", stream=sys.stderr)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted; nothing written", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            say(f"bench: work directory kept at {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(header(args))
    print()
    print(markdown_table(rows))
    if args.output:
        targets = [args.output]
    elif args.quick:
        targets = [RESULTS / "quick.json"]
    else:
        targets = [RESULTS / "latest.json", RESULTS / f"{dt.date.today().isoformat()}.json"]
    for path in targets:
        write_json(rows, path)
        say(f"bench: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
