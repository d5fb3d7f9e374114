"""Job payloads built from `etl enqueue` arguments, checked with the models the worker uses.

Everything here runs before the CLI connects anywhere, so a bad argument is refused with a message
naming the argument and nothing is enqueued. Local JSONL files (`upsert --file`, `transfer --file`)
are read here; an import's `--file` is a path the worker resolves inside its import dir.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from jobs.errors import EtlError
from jobs.models import (
    ExportPayload,
    ImportFilePayload,
    TransferItem,
    TransferPayload,
    UpsertRowsPayload,
)
from jobs.ping import PingPayload

ModelT = TypeVar("ModelT", bound=BaseModel)

# Payload field -> the argument that fills it, so messages name what the operator typed.
FLAGS: dict[str, str] = {
    "dataset": "--dataset",
    "path": "--file",
    "mode": "--mode",
    "max_reject_ratio": "--max-reject-ratio",
    "format": "--format",
    "compress": "--gzip",
    "since": "--since",
    "rows": "--file",
    "transfers": "--file",
    "id": "--id",
    "from_account": "--from",
    "to_account": "--to",
    "amount_cents": "--amount",
    "touch_db": "--no-db",
}


class BadArgument(EtlError):
    """An argument is not valid."""


def _message(error: Mapping[str, Any]) -> str:
    return str(error["msg"]).removeprefix("Value error, ")


def _check(model: type[ModelT], data: Mapping[str, Any], *, where: str = "") -> ModelT:
    """`model` validated from `data`; BadArgument naming each bad argument otherwise.

    `where` (a file and line) replaces the argument names for values read from a file.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        parts = []
        for error in exc.errors(include_input=False, include_url=False):
            loc = [str(part) for part in error["loc"]]
            if where:
                name = ".".join(loc) or "line"
            else:
                name = FLAGS.get(loc[0], loc[0]) if loc else "arguments"
            parts.append(f"{name}: {_message(error)}")
        raise BadArgument((f"{where}: " if where else "") + "; ".join(parts)) from None


def read_jsonl(path: str) -> list[tuple[int, dict[str, Any]]]:
    """The JSON objects of a local JSONL file with their line numbers; blank lines are skipped."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise BadArgument(f"--file: {path}: no such file") from None
    except IsADirectoryError:
        raise BadArgument(f"--file: {path}: is a directory, not a JSONL file") from None
    except PermissionError:
        raise BadArgument(f"--file: {path}: permission denied") from None
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
    return _check(
        ImportFilePayload,
        {"dataset": dataset, "path": file, "mode": mode, "max_reject_ratio": max_reject_ratio},
    )


def upsert_payload(*, dataset: str, file: str) -> UpsertRowsPayload:
    # The dataset first: a wrong name is the likelier mistake, and is cheaper to report.
    _check(UpsertRowsPayload, {"dataset": dataset, "rows": []})
    rows = [row for _, row in read_jsonl(file)]
    if not rows:
        raise BadArgument(f"--file: {file} holds no rows")
    return _check(UpsertRowsPayload, {"dataset": dataset, "rows": rows})


def export_payload(*, dataset: str, format: str, gzip: bool, since: str | None) -> ExportPayload:
    data: dict[str, Any] = {"dataset": dataset, "format": format, "compress": gzip}
    if since is not None:
        data["since"] = since
    return _check(ExportPayload, data)


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
            raise BadArgument(f"--file: give either --file or {', '.join(given)}, not both")
        items = [
            _check(TransferItem, row, where=f"{file} line {number}")
            for number, row in read_jsonl(file)
        ]
        if not items:
            raise BadArgument(f"--file: {file} holds no transfers")
    else:
        missing = [f for f in ("--from", "--to", "--amount") if single[f] is None]
        if missing:
            raise BadArgument(f"{', '.join(missing)}: required (or give --file)")
        items = [
            _check(
                TransferItem,
                {
                    "id": transfer_id or str(uuid.uuid4()),
                    "from_account": from_account,
                    "to_account": to_account,
                    "amount_cents": amount,
                },
            )
        ]
    return _check(TransferPayload, {"transfers": items})


def ping_payload(*, no_db: bool) -> PingPayload:
    return _check(PingPayload, {"touch_db": not no_db})
