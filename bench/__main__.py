"""`python -m bench`: run the scenarios, print the table, write the JSON results."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench import database, exports, growth, imports, queue, sessions, transfers, upserts
from bench.context import BenchContext
from bench.harness import (
    BenchError,
    Row,
    error_text,
    markdown_table,
    read_json,
    say,
    write_json,
)
from bench.pgclient import PgClient
from bench.plot import write_svg
from bench.report import describe_run, header_line, table_text
from jobs.errors import ConfigError
from worker import embedded
from worker.context import AppContext
from worker.db import create_engine, create_sessionmaker
from worker.logging import configure_logging
from worker.redis import connect
from worker.settings import Settings, get_settings

RESULTS = Path(__file__).resolve().parent / "results"
FAMILIES: dict[str, Callable[[BenchContext], Awaitable[list[Row]]]] = {
    "imports": imports.scenarios,
    "upserts": upserts.scenarios,
    "exports": exports.scenarios,
    "transfers": transfers.scenarios,
    "queue": queue.scenarios,
}
# A results file and the growth file beside it share one picture (the first's name, .svg).
COMPANIONS = {"latest.json": "growth.json", "quick.json": "quick-growth.json"}


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
    parser.add_argument(
        "--growth",
        nargs="?",
        const=",".join(str(size) for size in growth.DEFAULT_SIZES),
        metavar="SIZES",
        help="instead of the families: import, upsert and export at each size "
        "(100000,1000000,5000000); writes bench/results/growth.json",
    )
    parser.add_argument(
        "--plot",
        nargs="?",
        const=RESULTS / "latest.json",
        type=Path,
        metavar="JSON",
        help="only draw the SVG of a results file (bench/results/latest.json, with growth.json "
        "beside it): JSON's name with .svg",
    )
    parser.add_argument(
        "--table",
        type=Path,
        metavar="JSON",
        help="only print a results file's README table, with a header line naming the "
        "machine, PostgreSQL, the date and the command",
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.growth is not None:
        try:
            args.growth = growth.parse_sizes(args.growth)
        except BenchError as exc:
            parser.error(str(exc))
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


async def versions(settings: Settings) -> tuple[str | None, str | None]:
    """(PostgreSQL's server_version, Redis's redis_version) for the run's description."""
    assert settings.database_url is not None
    postgresql = redis = None
    try:
        postgresql = str(await database.fetchval(settings.database_url, "show server_version"))
    except Exception as exc:
        say(f"bench: cannot read PostgreSQL's version: {error_text(exc)}")
    try:
        pool = await connect(settings)
        try:
            info = await pool.info("server")
            redis = str(info.get("redis_version")) if info.get("redis_version") else None
        finally:
            await pool.aclose()
    except Exception as exc:  # a Redis without INFO (fakeredis) still runs the benchmark
        say(f"bench: cannot read Redis's version: {error_text(exc)}")
    return postgresql, redis


async def run(
    args: argparse.Namespace, server: Settings, workdir: Path
) -> tuple[list[Row], dict[str, Any]]:
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
            postgresql, redis = await versions(settings)
            described = describe_run(argv=args.argv, rows=args.rows, rounds=args.rounds,
                                     postgresql=postgresql, redis=redis,
                                     growth=args.growth)  # fmt: skip
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
            if args.growth is not None:
                say(f"bench: growth at {', '.join(f'{size:,}' for size in args.growth)} rows")
                return await growth.scenarios(bench, args.growth), described
            return await run_families(bench, args.only), described
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


def result_paths(args: argparse.Namespace) -> list[Path]:
    if args.output:
        return [args.output]
    today = dt.date.today().isoformat()
    if args.growth is not None:
        if args.quick:
            return [RESULTS / "quick-growth.json"]
        return [RESULTS / "growth.json", RESULTS / f"growth-{today}.json"]
    if args.quick:
        return [RESULTS / "quick.json"]
    return [RESULTS / "latest.json", RESULTS / f"{today}.json"]


def draw(path: Path, *, companions: bool = True) -> Path:
    """Write the SVG of the results file `path` (with its growth companion, COMPANIONS, unless
    told not to); its path."""
    sources, svg = [path], path.with_suffix(".svg")
    for main, companion in COMPANIONS.items():
        if companions and path.name in (main, companion):
            sources = [path.parent / main, path.parent / companion]
            svg = (path.parent / main).with_suffix(".svg")
    rows: list[Row] = []
    run: dict[str, Any] = {}
    growth_run: dict[str, Any] = {}
    for source in sources:
        if source.exists():
            described, found = read_json(source)
            if any(row.growth for row in found):
                growth_run = described
            else:
                run = described
            rows += found
    if not rows:
        raise BenchError(f"{path}: no results to draw")
    write_svg(rows, svg, run or growth_run, growth_run)
    return svg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table is not None or args.plot is not None:
        try:
            if args.table is not None:
                print(table_text(args.table))
            if args.plot is not None:
                say(f"bench: wrote {draw(args.plot)}")
        except (OSError, ValueError, BenchError) as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 2
        return 0
    for missing in sessions.uncovered():
        say(f"bench: warning: {missing} is not given to that job's baselines (bench/sessions.py)")
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
                    rows, described = asyncio.run(run(args, server, workdir))
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
    print(header_line(described))
    print()
    print(markdown_table(rows))
    targets = result_paths(args)
    for path in targets:
        write_json(rows, path, described)
        say(f"bench: wrote {path}")
    # --output FILE.json gets FILE.svg of that run alone; bench/results' files are drawn together.
    say(f"bench: wrote {draw(targets[0], companions=args.output is None)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
