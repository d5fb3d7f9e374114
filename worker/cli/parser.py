"""`etl`'s arguments: one `configure_<command>_parser` per command, as procrastinate's CLI does.

Each command's parser sets `handler` (a `(settings, args) -> exit code` function), `logs` (the
stream its logs go to) and `verbose` (logs below WARNING).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeAlias

from jobs.imports.quarantine import DEFAULT_PAGE, MAX_PAGE
from worker.cli.commands import (
    cmd_cancel,
    cmd_dashboard,
    cmd_demo,
    cmd_embedded_stop,
    cmd_enqueue,
    cmd_failed,
    cmd_migrate,
    cmd_rejects,
    cmd_retry,
    cmd_schedules,
    cmd_status,
    cmd_worker,
)
from worker.cli.health import cmd_check
from worker.cli.psql import cmd_db
from worker.settings import Settings

Handler = Callable[[Settings, argparse.Namespace], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def positive(kind: Callable[[str], float], noun: str) -> Callable[[str], Any]:
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


def add_command(
    subparsers: Subparsers, name: str, handler: Handler | None, help: str, **kw: Any
) -> argparse.ArgumentParser:
    """A command's parser: logs on stderr, warnings only, unless the command says otherwise."""
    parser = subparsers.add_parser(name, help=help, description=help, **kw)
    parser.set_defaults(logs="stderr", verbose=False)
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser


def add_json_flag(parser: argparse.ArgumentParser, help: str = "print JSON on stdout") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def configure_migrate_parser(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "migrate", cmd_migrate, "upgrade the database to the latest schema"
    )
    parser.set_defaults(verbose=True)


def configure_worker_parser(subparsers: Subparsers) -> None:
    parser = add_command(subparsers, "worker", cmd_worker, "run the worker (logs on stdout)")
    parser.add_argument("--burst", action="store_true", help="run what is queued, then exit")
    parser.set_defaults(logs="stdout", verbose=True)


def configure_check_parser(subparsers: Subparsers) -> None:
    add_command(
        subparsers,
        "check",
        cmd_check,
        "exit 0 when PostgreSQL and Redis answer and a worker is alive",
    )


def configure_embedded_parser(subparsers: Subparsers) -> None:
    parser = add_command(subparsers, "embedded", None, "the embedded PostgreSQL and Redis")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    stop = actions.add_parser("stop", help="stop the embedded servers under ETL_STATE_DIR")
    stop.set_defaults(handler=cmd_embedded_stop)


def _enqueue_options() -> argparse.ArgumentParser:
    """The options every `etl enqueue JOB` takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--wait", action="store_true", help="wait for the job and show its result")
    add_json_flag(common)
    common.add_argument(
        "--timeout",
        type=positive(float, "a number"),
        metavar="S",
        help="with --wait: give up after S seconds",
    )
    common.add_argument(
        "--job-id", metavar="ID", help="the job's id; a job with this id is enqueued only once"
    )
    common.add_argument(
        "--replace-failed",
        action="store_true",
        help="with --job-id: if a failed job holds that id, replace it (its failure is deleted); "
        "a queued, running or complete job is never replaced",
    )
    return common


def _configure_import(jobs: Subparsers, common: argparse.ArgumentParser) -> None:
    imp = jobs.add_parser("import", parents=[common], help="import a CSV file from the import dir")
    imp.add_argument("--dataset", required=True, help="customers or accounts")
    where = imp.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--path",
        metavar="NAME",
        help="a file in the worker's import directory (ETL_IMPORT_DIR), read by the worker: "
        "relative to it, or absolute inside it",
    )
    # Deprecated (one release): --file reads a local file in every other command.
    where.add_argument("--file", dest="legacy_path", metavar="NAME", help=argparse.SUPPRESS)
    imp.add_argument("--mode", default="upsert", help="upsert (default) or insert")
    imp.add_argument(
        "--max-reject-ratio",
        type=float,
        default=0.05,
        metavar="R",
        help="fail the import when more than this share of rows is rejected (default 0.05)",
    )


def _configure_upsert(jobs: Subparsers, common: argparse.ArgumentParser) -> None:
    ups = jobs.add_parser("upsert", parents=[common], help="upsert rows from a local JSONL file")
    ups.add_argument("--dataset", required=True, help="customers or accounts")
    ups.add_argument(
        "--from-file",
        "--file",
        dest="file",
        required=True,
        metavar="ROWS.jsonl",
        help="a local JSON Lines file read by this command: one row (a JSON object) a line",
    )


def _configure_export(jobs: Subparsers, common: argparse.ArgumentParser) -> None:
    exp = jobs.add_parser("export", parents=[common], help="export a dataset to the export dir")
    exp.add_argument("--dataset", required=True, help="customers, accounts or transfers")
    exp.add_argument("--format", default="csv", help="csv (default) or jsonl")
    exp.add_argument("--gzip", action="store_true", help="write a .gz file")
    exp.add_argument(
        "--since",
        metavar="ISO",
        help="only rows whose updated_at (transfers: created_at) is strictly later than this time",
    )
    exp.add_argument(
        "--incremental",
        metavar="NAME",
        help="the next export of the named feed: every row written since its previous export "
        "(the first is complete); not with --since",
    )
    exp.add_argument(
        "--include",
        action="append",
        metavar="RELATION",
        help="nest each customer's accounts in its line as an array: --include accounts "
        "(--dataset customers --format jsonl only; not with --incremental)",
    )
    exp.add_argument(
        "--parts",
        type=int,
        default=1,
        metavar="N",
        help="write N files (1-16) in parallel from one snapshot, one primary-key range each, "
        "by any free workers (default 1); not with --incremental or --include",
    )


def _configure_transfer(jobs: Subparsers, common: argparse.ArgumentParser) -> None:
    tra = jobs.add_parser("transfer", parents=[common], help="move money between accounts")
    tra.add_argument(
        "--from-file",
        "--file",
        dest="file",
        metavar="TRANSFERS.jsonl",
        help="a local JSON Lines file read by this command: one transfer a line, "
        '{"id", "from_account", "to_account", "amount_cents"}',
    )
    tra.add_argument("--from", dest="from_account", type=int, metavar="ID", help="paying account")
    tra.add_argument("--to", dest="to_account", type=int, metavar="ID", help="receiving account")
    tra.add_argument("--amount", type=int, metavar="CENTS", help="amount in cents")
    tra.add_argument("--id", metavar="UUID", help="the transfer's id (default: a new uuid4)")


def _configure_ping(jobs: Subparsers, common: argparse.ArgumentParser) -> None:
    png = jobs.add_parser("ping", parents=[common], help="a job that only touches the database")
    png.add_argument("--no-db", action="store_true", help="do not touch the database")


def configure_enqueue_parser(subparsers: Subparsers) -> None:
    parser = add_command(subparsers, "enqueue", cmd_enqueue, "enqueue a job; prints its id")
    jobs = parser.add_subparsers(dest="job", required=True, metavar="JOB")
    common = _enqueue_options()
    for configure in (
        _configure_import,
        _configure_upsert,
        _configure_export,
        _configure_transfer,
        _configure_ping,
    ):
        configure(jobs, common)


def configure_status_parser(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "status", cmd_status, "show a job's state, progress, result or error"
    )
    parser.add_argument("job_id", metavar="JOB_ID")
    add_json_flag(parser)


def configure_failed_parser(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "failed", cmd_failed, "list failed jobs still kept in Redis, newest first"
    )
    add_json_flag(parser)
    parser.add_argument(
        "--limit",
        type=positive(int, "an integer"),
        default=100,
        metavar="N",
        help="at most N (default 100)",
    )
    parser.add_argument("--all", action="store_true", help="include failures already retried")


def configure_retry_parser(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "retry", cmd_retry, "enqueue a failed job again; prints the new job id"
    )
    parser.add_argument("job_id", metavar="JOB_ID")
    add_json_flag(parser)


def configure_rejects_parser(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "rejects", cmd_rejects, "page through an import's rejected lines, by line"
    )
    parser.add_argument("import_id", metavar="IMPORT_ID", help="the import_id of the job's result")
    parser.add_argument(
        "--after",
        type=positive(int, "a line number"),
        metavar="LINE",
        help="start after this line (the `next:` line of the previous page says which)",
    )
    parser.add_argument(
        "--limit",
        type=positive(int, "an integer"),
        default=DEFAULT_PAGE,
        metavar="N",
        help=f"at most N lines (default {DEFAULT_PAGE}, at most {MAX_PAGE})",
    )
    add_json_flag(parser)


def configure_cancel_parser(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "cancel", cmd_cancel, "cancel a queued, deferred or running job"
    )
    parser.add_argument("job_id", metavar="JOB_ID")
    parser.add_argument(
        "--wait",
        type=positive(float, "a number"),
        default=30.0,
        metavar="S",
        help="how long to wait for a running job to stop (default 30)",
    )
    add_json_flag(parser)


def configure_dashboard_parser(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "dashboard", cmd_dashboard, "serve the operators' web dashboard"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)"
    )
    parser.add_argument(
        "--port", type=positive(int, "a port number"), default=8787, help="default 8787"
    )
    parser.set_defaults(verbose=True)


def configure_schedules_parser(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "schedules",
        cmd_schedules,
        "list the scheduled jobs (ETL_SCHEDULES, or the nightly export) and their next runs",
    )
    add_json_flag(parser)


def configure_db_parser(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "db",
        cmd_db,
        "open psql on the configured database (the embedded one when DATABASE_URL is unset)",
        aliases=["psql"],
        epilog="psql's own arguments go after --: etl db -- -c 'select 1'. The password "
        "reaches psql in its environment (PGPASSWORD), never on its command line.",
    )
    parser.add_argument(
        "psql_args", nargs=argparse.REMAINDER, metavar="-- PSQL_ARGS", help="passed to psql"
    )


def configure_demo_parser(subparsers: Subparsers) -> None:
    parser = add_command(subparsers, "demo", cmd_demo, "run the sample scenario end to end")
    add_json_flag(parser, "print the summary as JSON")
    parser.set_defaults(verbose=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="etl",
        description="ETL worker: migrate, run the worker, enqueue and inspect jobs.",
        epilog="Configuration comes from the environment (DATABASE_URL, REDIS_URL, ETL_*); "
        "with no URLs, embedded servers start under ETL_STATE_DIR.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for configure in (
        configure_migrate_parser,
        configure_worker_parser,
        configure_check_parser,
        configure_embedded_parser,
        configure_enqueue_parser,
        configure_status_parser,
        configure_failed_parser,
        configure_retry_parser,
        configure_cancel_parser,
        configure_rejects_parser,
        configure_demo_parser,
        configure_dashboard_parser,
        configure_schedules_parser,
        configure_db_parser,
    ):
        configure(subparsers)
    return parser
