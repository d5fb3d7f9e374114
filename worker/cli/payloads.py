"""Job payloads built from `etl enqueue` arguments, checked with the models the worker uses.

Everything here runs before the CLI connects anywhere, so a bad argument is refused with a message
naming the argument and nothing is enqueued. Local JSONL files (`upsert --from-file`,
`transfer --from-file`) are read here; an import's `--path` is a file the worker opens in its
import dir (`--file`, its old name, still works for one release).
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from jobs.catalogue import BY_NAME
from jobs.errors import validation_problems
from jobs.models import (
    ExportPayload,
    ImportFilePayload,
    TransferItem,
    TransferPayload,
    UpsertRowsPayload,
)
from jobs.ping import PingPayload
from jobs.spec import AnySpec
from worker.errors import BadArgument

ModelT = TypeVar("ModelT", bound=BaseModel)

# Payload field -> the argument that fills it, so messages name what the operator typed.
FLAGS: dict[str, str] = {
    "dataset": "--dataset",
    "path": "--path",
    "mode": "--mode",
    "max_reject_ratio": "--max-reject-ratio",
    "format": "--format",
    "compress": "--gzip",
    "since": "--since",
    "incremental": "--incremental",
    "include": "--include",
    "parts": "--parts",
    "rows": "--from-file",
    "transfers": "--from-file",
    "id": "--id",
    "from_account": "--from",
    "to_account": "--to",
    "amount_cents": "--amount",
    "touch_db": "--no-db",
}


def _flag(loc: Sequence[str]) -> str:
    return FLAGS.get(loc[0], loc[0]) if loc else "arguments"


def _field(loc: Sequence[str]) -> str:
    return ".".join(loc) or "line"


def validated(model: type[ModelT], data: Mapping[str, Any], *, where: str = "") -> ModelT:
    """`model` validated from `data`; BadArgument naming each bad argument otherwise.

    `where` (a file and line) replaces the argument names for values read from a file.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc, name=_field if where else _flag)
        raise BadArgument((f"{where}: " if where else "") + "; ".join(problems)) from None


def read_jsonl(path: str) -> list[tuple[int, dict[str, Any]]]:
    """The JSON objects of a local JSONL file with their line numbers; blank lines are skipped."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise BadArgument(f"--from-file: {path}: no such file") from None
    except IsADirectoryError:
        raise BadArgument(f"--from-file: {path}: is a directory, not a JSONL file") from None
    except PermissionError:
        raise BadArgument(f"--from-file: {path}: permission denied") from None
    except UnicodeDecodeError as exc:
        raise BadArgument(f"{path} line {text_line_of(exc)}: not UTF-8 text") from None
    out: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            raise BadArgument(f"{path} line {number}: not JSON") from None
        if not isinstance(value, dict):
            raise BadArgument(
                f"{path} line {number}: a JSON object is expected, got {type(value).__name__}"
            )
        out.append((number, value))
    return out


def text_line_of(exc: UnicodeDecodeError) -> int:
    """The 1-based line holding the first byte that is not UTF-8."""
    return exc.object[: exc.start].count(b"\n") + 1


def import_payload(
    *, dataset: str, file: str, mode: str, max_reject_ratio: float
) -> ImportFilePayload:
    return validated(
        ImportFilePayload,
        {"dataset": dataset, "path": file, "mode": mode, "max_reject_ratio": max_reject_ratio},
    )


def upsert_payload(*, dataset: str, file: str) -> UpsertRowsPayload:
    # The dataset first: a wrong name is the likelier mistake, and is cheaper to report.
    validated(UpsertRowsPayload, {"dataset": dataset, "rows": []})
    rows = [row for _, row in read_jsonl(file)]
    if not rows:
        raise BadArgument(f"--from-file: {file} holds no rows")
    return validated(UpsertRowsPayload, {"dataset": dataset, "rows": rows})


def export_payload(
    *,
    dataset: str,
    format: str,
    gzip: bool,
    since: str | None,
    incremental: str | None = None,
    include: Sequence[str] | None = None,
    parts: int = 1,
) -> ExportPayload:
    data: dict[str, Any] = {"dataset": dataset, "format": format, "compress": gzip, "parts": parts}
    if since is not None:
        data["since"] = since
    if incremental is not None:
        data["incremental"] = incremental
    if include:
        data["include"] = list(include)
    return validated(ExportPayload, data)


def transfer_payload(
    *,
    file: str | None,
    from_account: int | None,
    to_account: int | None,
    amount: int | None,
    transfer_id: str | None,
) -> TransferPayload:
    """From a JSONL file of transfers, or from one transfer's arguments (uuid4 id by default)."""
    single = {"--from": from_account, "--to": to_account, "--amount": amount, "--id": transfer_id}
    if file is not None:
        given = [flag for flag, value in single.items() if value is not None]
        if given:
            raise BadArgument(
                f"--from-file: give either --from-file or {', '.join(given)}, not both"
            )
        items = [
            validated(TransferItem, row, where=f"{file} line {number}")
            for number, row in read_jsonl(file)
        ]
        if not items:
            raise BadArgument(f"--from-file: {file} holds no transfers")
    else:
        missing = [f for f in ("--from", "--to", "--amount") if single[f] is None]
        if missing:
            raise BadArgument(f"{', '.join(missing)}: required (or give --from-file)")
        items = [
            validated(
                TransferItem,
                {
                    "id": transfer_id or str(uuid.uuid4()),
                    "from_account": from_account,
                    "to_account": to_account,
                    "amount_cents": amount,
                },
            )
        ]
    return validated(TransferPayload, {"transfers": items})


def ping_payload(*, no_db: bool) -> PingPayload:
    return validated(PingPayload, {"touch_db": not no_db})


def payload_from_args(args: argparse.Namespace) -> tuple[AnySpec, BaseModel]:
    """The job `etl enqueue JOB ...` names and its payload; BadArgument before anything connects."""
    if args.job == "import":
        return BY_NAME["import_file"], import_payload(
            dataset=args.dataset,
            file=args.path if args.path is not None else args.legacy_path,
            mode=args.mode,
            max_reject_ratio=args.max_reject_ratio,
        )
    if args.job == "upsert":
        return BY_NAME["upsert_rows"], upsert_payload(dataset=args.dataset, file=args.file)
    if args.job == "export":
        return BY_NAME["export_dataset"], export_payload(
            dataset=args.dataset,
            format=args.format,
            gzip=args.gzip,
            since=args.since,
            incremental=args.incremental,
            include=args.include,
            parts=args.parts,
        )
    if args.job == "transfer":
        return BY_NAME["transfer_funds"], transfer_payload(
            file=args.file,
            from_account=args.from_account,
            to_account=args.to_account,
            amount=args.amount,
            transfer_id=args.id,
        )
    return BY_NAME["ping"], ping_payload(no_db=args.no_db)
