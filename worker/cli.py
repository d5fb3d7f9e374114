"""The `etl` command: migrate, run the worker, check health, enqueue jobs, inspect and retry them.

Exit codes: 0 done, 1 failed (a job failed, a server did not answer, a check failed), 2 refused
(bad arguments or configuration; nothing was enqueued). Errors are one line on stderr, never a
traceback, never a password. Logs go to stderr, except the worker's, which go to stdout; stdout
carries only what a command prints (`--json`: one JSON document).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ValidationError

from jobs.catalogue import BY_NAME
from jobs.errors import ConfigError, EtlError, InvalidPayload, is_transient, sqlstate_of
from worker import cli_payloads, embedded
from worker.client import EtlClient, JobHandle
from worker.logging import configure_logging
from worker.settings import Settings, get_settings, redact_url
from worker.status import JobState, list_failed

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

CONNECT_TIMEOUT_S = 10.0


class Unreachable(EtlError):
    """A server did not answer."""


class SettingsInvalid(ConfigError):
    """The environment holds settings that are not valid."""


# ---------------------------------------------------------------------------------------------
# Output


def out(text: str = "") -> None:
    print(text, file=sys.stdout, flush=True)


def out_json(value: Any) -> None:
    out(json.dumps(value, default=str, ensure_ascii=False))


class Secrets:
    """Passwords from the URLs in the environment, scrubbed from anything the CLI prints."""

    def __init__(self) -> None:
        self._values: set[str] = set()

    def add_url(self, url: str | None) -> None:
        if not url:
            return
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password is None and "@" in url and "://" in url:
            # Not parseable as a URL: treat everything between the scheme and @ as secret.
            userinfo = url.split("://", 1)[1].rpartition("@")[0]
            password = userinfo.partition(":")[2] or None
        if password:
            self._values |= {password, unquote(password)}

    def scrub(self, text: str) -> str:
        for value in sorted(self._values, key=len, reverse=True):
            text = text.replace(value, "***")
        return text


SECRETS = Secrets()


def err(text: str) -> None:
    print(SECRETS.scrub(text), file=sys.stderr, flush=True)


def _log_format(settings: Settings | None, stream: TextIO) -> str:
    if settings is not None and settings.log_format is not None:
        return settings.log_format
    return "console" if stream.isatty() else "json"


def _configure_logs(settings: Settings | None, *, stream: TextIO, verbose: bool) -> None:
    level = settings.log_level if settings is not None and verbose else "WARNING"
    configure_logging(level, _log_format(settings, stream), stream=stream)  # type: ignore[arg-type]
    # Alembic announces each of its plugins at INFO; only the migrations themselves are news.
    logging.getLogger("alembic.runtime.plugins").setLevel("WARNING")


# ---------------------------------------------------------------------------------------------
# Settings and servers


def load_settings() -> Settings:
    """The settings from the environment; ConfigError with one `NAME: problem` line per field."""
    try:
        return get_settings()
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_input=False, include_url=False):
            name = ".".join(str(part) for part in error["loc"]) or "settings"
            message = str(error["msg"]).removeprefix("Value error, ").removeprefix(f"{name} ")
            lines.append(f"{name}: {message}")
        raise SettingsInvalid("\n".join(lines)) from None


def describe(exc: BaseException) -> str:
    """The innermost cause of `exc` as `Type: first line`."""
    seen = {id(exc)}
    root = exc
    while True:
        inner = getattr(root, "orig", None) or root.__cause__ or root.__context__
        if not isinstance(inner, BaseException) or id(inner) in seen:
            break
        seen.add(id(inner))
        root = inner
    text = str(root).strip()
    if isinstance(root, TimeoutError) and not text:
        return f"no answer within {CONNECT_TIMEOUT_S:g} s"
    first = text.splitlines()[0] if text else ""
    return f"{type(root).__name__}: {first}" if first else type(root).__name__


def _connection_problem(exc: BaseException) -> bool:
    import redis.exceptions

    if is_transient(exc) or isinstance(exc, OSError | TimeoutError):
        return True
    code = sqlstate_of(exc)
    # 28xxx: bad user or password; 3D000: no such database.
    if code is not None and (code.startswith("28") or code == "3D000"):
        return True
    return isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.ResponseError)


@contextlib.contextmanager
def reaching(server: str, url: str | None) -> Iterator[None]:
    """Turn a failure to reach `server` into one Unreachable line (URL without its password)."""
    try:
        yield
    except EtlError:
        raise
    except Exception as exc:
        if isinstance(exc, ConnectionError) and str(exc).startswith("cannot reach"):
            raise Unreachable(str(exc)) from None  # worker.redis.connect said it already
        if _connection_problem(exc):
            where = redact_url(url) if url else "(no URL)"
            raise Unreachable(f"cannot reach {server} at {where}: {describe(exc)}") from None
        raise


async def ping_database(settings: Settings) -> None:
    from sqlalchemy import text

    from worker.db import create_engine

    with reaching("PostgreSQL", settings.database_url):
        engine = create_engine(settings)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S), engine.connect() as conn:
                await conn.execute(text("select 1"))
        finally:
            await engine.dispose()


async def ping_redis(settings: Settings) -> None:
    from worker.redis import connect

    with reaching("Redis", settings.redis_url):
        async with asyncio.timeout(CONNECT_TIMEOUT_S * 2):
            redis = await connect(settings)
            try:
                await redis.ping()
            finally:
                await redis.aclose()


def servers(settings: Settings) -> Settings:
    """Settings pointing at real servers: the configured ones, or the embedded ones."""
    return embedded.resolve(settings)


def redis_only(settings: Settings) -> Settings:
    # Commands that only read or write Redis need no database: with REDIS_URL set, nothing is
    # started; without it, the embedded servers are (they live and die together).
    return settings if settings.redis_url else embedded.resolve(settings)


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


# ---------------------------------------------------------------------------------------------
# Commands


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from worker.migrate import upgrade_to_head

    settings = servers(settings)
    assert settings.database_url is not None
    with reaching("PostgreSQL", settings.database_url):
        head = upgrade_to_head(settings.database_url)
    out(f"database {settings.database_url_safe()} is at revision {head} (head)")
    return EXIT_OK


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    settings = servers(settings)
    asyncio.run(_preflight(settings))
    asyncio.run(_run_worker(settings, burst=args.burst))
    return EXIT_OK


async def _preflight(settings: Settings) -> None:
    await ping_redis(settings)
    await ping_database(settings)


async def _run_worker(settings: Settings, *, burst: bool) -> None:
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


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    settings = servers(settings)
    problems, health = asyncio.run(_check(settings))
    if problems:
        for problem in problems:
            err(f"check failed: {problem}")
        return EXIT_FAILED
    out(f"ok: PostgreSQL and Redis answer; worker on queue {settings.queue_name!r}: {health}")
    return EXIT_OK


async def _check(settings: Settings) -> tuple[list[str], str]:
    from arq.constants import health_check_key_suffix

    from worker.redis import connect

    problems: list[str] = []
    try:
        await ping_database(settings)
    except Unreachable as exc:
        problems.append(exc.message)
    key = settings.queue_name + health_check_key_suffix
    health = ""
    try:
        with reaching("Redis", settings.redis_url):
            async with asyncio.timeout(CONNECT_TIMEOUT_S * 2):
                redis = await connect(settings)
                try:
                    raw = await redis.get(key)
                finally:
                    await redis.aclose()
        if raw is None:
            problems.append(
                f"no worker is running on queue {settings.queue_name!r} "
                f"(no fresh health key {key!r}; start one with `etl worker`)"
            )
        else:
            health = raw.decode(errors="replace")
    except Unreachable as exc:
        problems.append(exc.message)
    return problems, health


def cmd_embedded_stop(settings: Settings, args: argparse.Namespace) -> int:
    stopped = embedded.stop(settings)
    if stopped:
        out(f"stopped the embedded {' and '.join(sorted(stopped))} under {settings.state_dir}")
    else:
        out(f"no embedded server was running under {settings.state_dir}")
    return EXIT_OK


def _payload(args: argparse.Namespace) -> tuple[str, BaseModel]:
    """The job's name and payload; BadArgument before anything connects."""
    kind = args.job
    if kind == "import":
        return "import_file", cli_payloads.import_payload(
            dataset=args.dataset,
            file=args.file,
            mode=args.mode,
            max_reject_ratio=args.max_reject_ratio,
        )
    if kind == "upsert":
        return "upsert_rows", cli_payloads.upsert_payload(dataset=args.dataset, file=args.file)
    if kind == "export":
        return "export_dataset", cli_payloads.export_payload(
            dataset=args.dataset, format=args.format, gzip=args.gzip, since=args.since
        )
    if kind == "transfer":
        return "transfer_funds", cli_payloads.transfer_payload(
            file=args.file,
            from_account=args.from_account,
            to_account=args.to_account,
            amount=args.amount,
            transfer_id=args.id,
        )
    return "ping", cli_payloads.ping_payload(no_db=args.no_db)


def cmd_enqueue(settings: Settings, args: argparse.Namespace) -> int:
    function, payload = _payload(args)
    if args.timeout is not None and not args.wait:
        raise cli_payloads.BadArgument("--timeout: only with --wait")
    return asyncio.run(_enqueue(redis_only(settings), function, payload, args))


async def _enqueue(
    settings: Settings, function: str, payload: BaseModel, args: argparse.Namespace
) -> int:
    async with open_client(settings) as client:
        handle = await client.enqueue(BY_NAME[function], payload, _job_id=args.job_id)
        if not handle.created:
            err(f"a job with id {handle.job_id} already exists: not enqueued again")
        if not args.wait:
            if args.json:
                out_json({"job_id": handle.job_id, "function": function, "created": handle.created})
            else:
                out(handle.job_id)
            return EXIT_OK
        if not args.json:
            err(f"enqueued {function} as job {handle.job_id}; waiting for it")
        return await wait_for(handle, give_up_s=args.timeout, as_json=args.json)


def _progress_line(state: JobState, elapsed: float) -> str:
    parts = [f"{state.function} {state.job_id}: {state.state.replace('_', ' ')}"]
    if state.tries > 1:
        parts.append(f"(try {state.tries})")
    parts += [f"{k}={v}" for k, v in (state.progress or {}).items()]
    return " ".join([*parts, f"[{elapsed:.0f} s]"])


async def wait_for(handle: JobHandle[Any], *, give_up_s: float | None, as_json: bool) -> int:
    """Wait for the job; print its result (exit 0) or its error on stderr (exit 1)."""
    tty = sys.stderr.isatty()
    started = time.monotonic()
    shown = False
    while True:
        state = await handle.status()
        elapsed = time.monotonic() - started
        if state.finished or state.state == "not_found":
            break
        if give_up_s is not None and elapsed >= give_up_s:
            if shown:
                sys.stderr.write("\r\033[K")
            err(
                f"job {handle.job_id} still {state.state} after {give_up_s:g} s; "
                f"follow it with `etl status {handle.job_id}`"
            )
            return EXIT_FAILED
        if tty and elapsed >= 1.0:
            # One line rewritten in place: long jobs show they are alive and how far they got.
            sys.stderr.write("\r\033[K" + _progress_line(state, elapsed)[:200])
            sys.stderr.flush()
            shown = True
        await asyncio.sleep(0.25)
    if shown:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()
    if state.state == "not_found":
        err(f"job {handle.job_id} disappeared: its result expired or Redis was flushed")
        return EXIT_FAILED
    if state.state == "failed":
        assert state.error is not None
        err(f"job {handle.job_id} ({state.function}) failed after {_tries(state)}: {state.error}")
        return EXIT_FAILED
    if as_json:
        out_json(state.result)
    else:
        out(f"job {handle.job_id} ({state.function}) complete")
        for line in _result_lines(state.result):
            out(line)
    return EXIT_OK


def _tries(state: JobState) -> str:
    return f"{state.tries} {'try' if state.tries == 1 else 'tries'}"


def _compact(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _result_lines(result: Any, *, indent: str = "  ") -> list[str]:
    if not isinstance(result, dict):
        return [indent + _compact(result)]
    lines: list[str] = []
    for key, value in result.items():
        if isinstance(value, list):
            lines.append(f"{indent}{key}: {len(value)} item{'s' if len(value) != 1 else ''}")
            lines += [f"{indent}  - {_compact(item, 200)}" for item in value[:5]]
            if len(value) > 5:
                lines.append(f"{indent}  … {len(value) - 5} more (--json shows all)")
        else:
            lines.append(f"{indent}{key}: {_compact(value) if isinstance(value, dict) else value}")
    return lines


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_status(redis_only(settings), args.job_id, as_json=args.json))


async def _status(settings: Settings, job_id: str, *, as_json: bool) -> int:
    async with open_client(settings) as client:
        state = await client.status(job_id)
    if as_json:
        out_json(state.as_json())
    else:
        for line in _state_lines(state):
            out(line)
    return EXIT_FAILED if state.state == "not_found" else EXIT_OK


def _state_lines(state: JobState) -> list[str]:
    if state.state == "not_found":
        return [
            f"job {state.job_id}: not found (never enqueued, or its result expired: "
            "results are kept ETL_KEEP_RESULT seconds)"
        ]
    headline = {
        "queued": "queued",
        "deferred": f"waiting to run at {state.runs_at.isoformat() if state.runs_at else '?'}",
        "in_progress": "in progress",
        "complete": "complete",
        "failed": "failed",
    }[state.state]
    if state.tries:
        headline += f" ({_tries(state)})"
    lines = [f"job {state.job_id}: {headline}", f"  function: {state.function}"]
    lines.append(f"  arguments: {_compact(state.kwargs)}")
    if state.enqueued_at:
        lines.append(f"  enqueued: {state.enqueued_at.isoformat()}")
    if state.finished_at:
        lines.append(f"  finished: {state.finished_at.isoformat()}")
    if state.progress:
        lines.append(f"  progress: {' '.join(f'{k}={v}' for k, v in state.progress.items())}")
    if state.state == "complete":
        lines.append("  result:")
        lines += _result_lines(state.result, indent="    ")
    if state.error is not None:
        lines.append(f"  error: {state.error}")
    if state.retried_as:
        lines.append(f"  retried as: {state.retried_as}")
    return lines


def cmd_failed(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_failed(redis_only(settings), args))


async def _failed(settings: Settings, args: argparse.Namespace) -> int:
    async with open_client(settings) as client:
        failed = await list_failed(
            client.redis, queue_name=settings.queue_name, include_retried=args.all
        )
    failed = failed[: args.limit]
    if args.json:
        out_json([state.as_json() for state in failed])
        return EXIT_OK
    if not failed:
        out(f"no failed jobs kept on queue {settings.queue_name!r}")
        return EXIT_OK
    for state in failed:
        when = state.finished_at.isoformat(timespec="seconds") if state.finished_at else "?"
        retried = f"  retried as {state.retried_as}" if state.retried_as else ""
        out(f"{when}  {state.job_id}  {state.function}  tries={state.tries}{retried}")
        out(f"    error: {state.error}")
        out(f"    arguments: {_compact(state.kwargs)}")
    return EXIT_OK


def cmd_retry(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_retry(redis_only(settings), args.job_id, as_json=args.json))


async def _retry(settings: Settings, job_id: str, *, as_json: bool) -> int:
    async with open_client(settings) as client:
        handle = await client.retry(job_id)
    if as_json:
        out_json({"job_id": handle.job_id, "function": handle.function, "retry_of": job_id})
    else:
        out(handle.job_id)
    return EXIT_OK


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from worker import demo
    from worker.migrate import upgrade_to_head

    settings = servers(settings)
    asyncio.run(_preflight(settings))
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


# ---------------------------------------------------------------------------------------------
# Arguments


def _positive(kind: Callable[[str], float], noun: str) -> Callable[[str], Any]:
    """An argparse type: `kind(text)`, refused unless it parses and is > 0."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="etl",
        description="ETL worker: migrate, run the worker, enqueue and inspect jobs.",
        epilog="Configuration comes from the environment (DATABASE_URL, REDIS_URL, ETL_*); "
        "with no URLs, embedded servers start under ETL_STATE_DIR.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[..., int], help: str, **kw: Any) -> Any:
        sub = commands.add_parser(name, help=help, description=help, **kw)
        sub.set_defaults(handler=handler, logs="stderr", verbose=False)
        return sub

    command("migrate", cmd_migrate, "upgrade the database to the latest schema").set_defaults(
        verbose=True
    )
    worker = command("worker", cmd_worker, "run the worker (logs on stdout)")
    worker.add_argument("--burst", action="store_true", help="run what is queued, then exit")
    worker.set_defaults(logs="stdout", verbose=True)
    command("check", cmd_check, "exit 0 when PostgreSQL and Redis answer and a worker is alive")
    emb = command("embedded", lambda *_: EXIT_USAGE, "the embedded PostgreSQL and Redis")
    emb_sub = emb.add_subparsers(dest="action", required=True, metavar="ACTION")
    stop = emb_sub.add_parser("stop", help="stop the embedded servers under ETL_STATE_DIR")
    stop.set_defaults(handler=cmd_embedded_stop)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--wait", action="store_true", help="wait for the job and show its result")
    common.add_argument("--json", action="store_true", help="print JSON on stdout")
    common.add_argument(
        "--timeout",
        type=_positive(float, "a number"),
        metavar="S",
        help="with --wait: give up after S seconds",
    )
    common.add_argument(
        "--job-id", metavar="ID", help="the job's id; a job with this id is enqueued only once"
    )
    enqueue = command("enqueue", cmd_enqueue, "enqueue a job; prints its id")
    jobs = enqueue.add_subparsers(dest="job", required=True, metavar="JOB")

    imp = jobs.add_parser("import", parents=[common], help="import a CSV file from the import dir")
    imp.add_argument("--dataset", required=True, help="customers or accounts")
    imp.add_argument(
        "--file", required=True, metavar="PATH", help="relative to ETL_IMPORT_DIR, or inside it"
    )
    imp.add_argument("--mode", default="upsert", help="upsert (default) or insert")
    imp.add_argument(
        "--max-reject-ratio",
        type=float,
        default=0.05,
        metavar="R",
        help="fail the import when more than this share of rows is rejected (default 0.05)",
    )

    ups = jobs.add_parser("upsert", parents=[common], help="upsert rows from a local JSONL file")
    ups.add_argument("--dataset", required=True, help="customers or accounts")
    ups.add_argument("--file", required=True, metavar="ROWS.jsonl", help="one JSON object a line")

    exp = jobs.add_parser("export", parents=[common], help="export a dataset to the export dir")
    exp.add_argument("--dataset", required=True, help="customers, accounts or transfers")
    exp.add_argument("--format", default="csv", help="csv (default) or jsonl")
    exp.add_argument("--gzip", action="store_true", help="write a .gz file")
    exp.add_argument("--since", metavar="ISO", help="only rows changed at or after this time")

    tra = jobs.add_parser("transfer", parents=[common], help="move money between accounts")
    tra.add_argument(
        "--file",
        metavar="TRANSFERS.jsonl",
        help='a local file of {"id", "from_account", "to_account", "amount_cents"} lines',
    )
    tra.add_argument("--from", dest="from_account", type=int, metavar="ID", help="paying account")
    tra.add_argument("--to", dest="to_account", type=int, metavar="ID", help="receiving account")
    tra.add_argument("--amount", type=int, metavar="CENTS", help="amount in cents")
    tra.add_argument("--id", metavar="UUID", help="the transfer's id (default: a new uuid4)")

    png = jobs.add_parser("ping", parents=[common], help="a job that only touches the database")
    png.add_argument("--no-db", action="store_true", help="do not touch the database")

    status = command("status", cmd_status, "show a job's state, progress, result or error")
    status.add_argument("job_id", metavar="JOB_ID")
    status.add_argument("--json", action="store_true", help="print JSON on stdout")

    failed = command("failed", cmd_failed, "list failed jobs still kept in Redis, newest first")
    failed.add_argument("--json", action="store_true", help="print JSON on stdout")
    failed.add_argument(
        "--limit",
        type=_positive(int, "an integer"),
        default=100,
        metavar="N",
        help="at most N (default 100)",
    )
    failed.add_argument("--all", action="store_true", help="include failures already retried")

    retry = command("retry", cmd_retry, "enqueue a failed job again; prints the new job id")
    retry.add_argument("job_id", metavar="JOB_ID")
    retry.add_argument("--json", action="store_true", help="print JSON on stdout")

    demo = command("demo", cmd_demo, "run the sample scenario end to end")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.set_defaults(verbose=True)
    return parser


def _exit_code(exc: EtlError) -> int:
    if isinstance(exc, ConfigError | InvalidPayload | cli_payloads.BadArgument):
        return EXIT_USAGE
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("DATABASE_URL", "REDIS_URL"):
        SECRETS.add_url(os.environ.get(name))
    stream = sys.stdout if args.logs == "stdout" else sys.stderr
    # Until the settings are read, only warnings, and on stderr.
    _configure_logs(None, stream=sys.stderr, verbose=False)
    try:
        settings = load_settings()
        SECRETS.add_url(settings.database_url)
        SECRETS.add_url(settings.redis_url)
        _configure_logs(settings, stream=stream, verbose=args.verbose)
        code: int = args.handler(settings, args)
        return code
    except EtlError as exc:
        # Settings problems are `NAME: problem` lines, like the environment they come from.
        prefix = "" if isinstance(exc, SettingsInvalid) else "etl: "
        for line in exc.message.splitlines():
            err(prefix + line)
        return _exit_code(exc)
    except KeyboardInterrupt:
        err("etl: interrupted")
        return 130
    except Exception as exc:
        err(f"etl: unexpected error: {describe(exc)}")
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            err(traceback.format_exc())
        else:
            err("etl: set LOG_LEVEL=DEBUG to see the traceback")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
