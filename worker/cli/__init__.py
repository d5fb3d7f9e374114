"""The `etl` command: migrate, run the worker, check health, enqueue jobs, inspect and retry them.

Exit codes: 0 done, 1 failed (a job failed, a server did not answer, a check failed), 2 refused
(bad arguments or configuration; nothing was enqueued). Errors are one line on stderr, never a
traceback, never a password. Logs go to stderr, except the worker's, which go to stdout; stdout
carries only what a command prints (`--json`: one JSON document).

`parser.py` reads the arguments, `commands.py` and `health.py` do the work, `payloads.py` turns
arguments into job payloads, `render.py` prints.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import TextIO

from pydantic import ValidationError

from jobs.errors import EtlError, describe, validation_problems
from worker.cli.exits import EXIT_FAILED, EXIT_INTERRUPTED, exit_code
from worker.cli.parser import build_parser
from worker.cli.render import SECRETS, err
from worker.errors import SettingsInvalid
from worker.logging import configure_logging
from worker.settings import Settings, get_settings

__all__ = ["build_parser", "load_settings", "main"]


def load_settings() -> Settings:
    """The settings from the environment; SettingsInvalid with a `NAME: problem` line per field."""
    try:
        return get_settings()
    except ValidationError as exc:
        problems = validation_problems(exc, name=lambda loc: ".".join(loc) or "settings")
        raise SettingsInvalid("\n".join(_unrepeated(line) for line in problems)) from None


def _unrepeated(problem: str) -> str:
    # The settings' own checks name their variable: `NAME: NAME is ...` would say it twice.
    name, _, text = problem.partition(": ")
    return f"{name}: {text.removeprefix(f'{name}: ').removeprefix(f'{name} ')}"


def _configure_logs(settings: Settings | None, *, stream: TextIO, verbose: bool) -> None:
    level = settings.log_level if settings is not None and verbose else "WARNING"
    if settings is not None and settings.log_format is not None:
        log_format = settings.log_format
    else:
        log_format = "console" if stream.isatty() else "json"
    configure_logging(level, log_format, stream=stream)
    # Alembic announces each of its plugins at INFO; only the migrations themselves are news.
    logging.getLogger("alembic.runtime.plugins").setLevel("WARNING")


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
        return exit_code(exc)
    except KeyboardInterrupt:
        err("etl: interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        err(f"etl: unexpected error: {describe(exc)}")
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            err(traceback.format_exc())
        else:
            err("etl: set LOG_LEVEL=DEBUG to see the traceback")
        return EXIT_FAILED
