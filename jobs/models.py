"""Job payloads and results: the worker validates with these, and the client enqueues with them."""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)

from jobs.errors import UnknownDataset
from jobs.registry import get_dataset
from jobs.validation import BIGINT_MAX

MAX_UPSERT_ROWS = 10_000
MAX_TRANSFERS = 10_000
MAX_EXPORT_PARTS = 16


def _dataset_checker(*, writable: bool) -> Callable[[str], str]:
    def check(name: str) -> str:
        try:
            get_dataset(name, writable=writable)
        except UnknownDataset as exc:
            raise ValueError(exc.message) from None  # pydantic reports ValueErrors per field
        return name

    return check


DatasetName = Annotated[str, AfterValidator(_dataset_checker(writable=False))]
WritableDatasetName = Annotated[str, AfterValidator(_dataset_checker(writable=True))]
BigInt = Annotated[StrictInt, Field(ge=-BIGINT_MAX - 1, le=BIGINT_MAX)]


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImportFilePayload(Payload):
    """`import_file`: load a CSV file from the import dir through COPY."""

    dataset: WritableDatasetName
    path: Annotated[str, Field(min_length=1, max_length=4096)]
    mode: Literal["upsert", "insert"] = "upsert"
    max_reject_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05


class ImportResult(BaseModel):
    import_id: UUID
    dataset: str
    rows_read: int
    inserted: int
    updated: int
    skipped: int
    rejected: int


class UpsertRowsPayload(Payload):
    """`upsert_rows`: up to 10,000 rows in the payload, upserted with ON CONFLICT DO UPDATE."""

    dataset: WritableDatasetName
    rows: list[dict[str, Any]]

    @field_validator("rows", mode="before")
    @classmethod
    def _bounded(cls, rows: Any) -> Any:
        if isinstance(rows, list) and len(rows) > MAX_UPSERT_ROWS:
            raise ValueError(
                f"at most {MAX_UPSERT_ROWS} rows per upsert_rows job, got {len(rows)}; "
                "use import_file for larger loads"
            )
        return rows


class RowReject(BaseModel):
    index: int
    reason: str


class UpsertResult(BaseModel):
    dataset: str
    inserted: int
    updated: int
    rejected: int
    rejects: list[RowReject]


FEED_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SINCE_RANGE = "Input should be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"
# A year of five or more digits, a signed year, or year 0: valid ISO-8601 forms out of range.
_YEAR_OUT_OF_RANGE = re.compile(r"\s*(?:[+-]\d|\d{5}|0000\D|0000$)")


def _feed_name(name: str) -> str:
    if not FEED_NAME.fullmatch(name):
        raise ValueError(
            "a feed name is 1 to 64 characters from a-z, 0-9, _ and -, "
            "starting with a letter or a digit"
        )
    return name


FeedName = Annotated[StrictStr, AfterValidator(_feed_name)]


class ExportPayload(Payload):
    """`export_dataset`: stream a dataset to a file under the export dir.

    With `incremental`, the export is the next one of that named feed: the first holds every
    row, each later one the rows inserted or updated since the feed's previous export was taken,
    by any writer (plain SQL too), however long their transactions ran. Deletes are not
    carried: a deleted row is simply absent from later files. A feed follows one dataset.
    """

    dataset: DatasetName
    format: Literal["csv", "jsonl"] = "csv"
    compress: StrictBool = False
    since: datetime | None = None
    """Only rows whose timestamp is later; set from the writing transaction's start time (and
    not by plain SQL updates), so an export can miss rows: `incremental` does not."""
    incremental: FeedName | None = None
    """The feed's name; its cursor is stored in the database (table export_feeds)."""
    include: Annotated[list[Literal["accounts"]], Field(exclude_if=operator.not_)] = []
    """Relationships nested in each JSON line: `accounts`, each customer's accounts as an array
    (customers only, format jsonl, not incremental). Left out of the JSON when empty."""
    parts: Annotated[
        StrictInt,
        Field(ge=1, le=MAX_EXPORT_PARTS, exclude_if=functools.partial(operator.eq, 1)),
    ] = 1
    """Files written in parallel from one snapshot, each a primary-key range, by part jobs any
    worker may run (jobs/exports/parallel.py). Left out of the JSON when 1."""

    @field_validator("since", mode="before")
    @classmethod
    def _iso_8601(cls, value: Any) -> Any:
        # Left to pydantic, "yesterday" is "input is too short" and "1700000000" is taken as
        # Unix seconds; the contract is ISO-8601, and the message says so.
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                if _YEAR_OUT_OF_RANGE.match(value):
                    raise ValueError(SINCE_RANGE) from None
                raise ValueError(
                    "Input should be a valid datetime in ISO-8601 form, e.g. 2026-11-21T00:00:00Z"
                ) from None
        if isinstance(value, int | float):
            raise ValueError("Input should be a valid datetime as an ISO-8601 string, not a number")
        return value

    @field_validator("since")
    @classmethod
    def _in_range(cls, value: datetime | None) -> datetime | None:
        # 0001-01-01T00:00:00+05:00 is a valid datetime whose UTC time is not: the driver failed
        # on it in the worker. Every time Python holds in UTC, PostgreSQL holds too.
        if value is not None and value.tzinfo is not None:
            try:
                value.astimezone(UTC)
            except OverflowError:
                raise ValueError(SINCE_RANGE) from None
        return value

    @field_validator("incremental")
    @classmethod
    def _not_with_since(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("since") is not None:
            raise ValueError(
                "cannot be combined with since: an incremental export starts where its feed's "
                "previous export ended; give one or the other"
            )
        return value

    @field_validator("include")
    @classmethod
    def _nestable(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if not value:
            return value
        nested = ", ".join(dict.fromkeys(value))
        dataset = info.data.get("dataset")
        if dataset is not None and dataset != "customers":
            raise ValueError(
                f"only the customers dataset can include {nested}, not {dataset}; "
                "drop include or export customers"
            )
        if info.data.get("format", "jsonl") != "jsonl":
            raise ValueError(
                f"{nested} can be nested only in format jsonl: a CSV row holds no arrays; "
                "give format jsonl"
            )
        if info.data.get("incremental") is not None:
            raise ValueError(
                "cannot be combined with incremental: a feed carries the rows of one table, and "
                "a changed account does not change its customer's row; give one or the other"
            )
        return list(dict.fromkeys(value))  # each once, in the order given

    @field_validator("parts")
    @classmethod
    def _plain_only(cls, value: int, info: ValidationInfo) -> int:
        if value > 1 and info.data.get("incremental") is not None:
            raise ValueError(
                "cannot be combined with incremental: a feed's export is one file, published as "
                "its cursor advances; give parts or incremental, not both"
            )
        if value > 1 and info.data.get("include"):
            raise ValueError(
                "cannot be combined with include: nested exports are read in one session; "
                "drop include or parts"
            )
        return value


# Left out of the JSON when None. `is_(None, value)` runs in C: about 0.1 ms per 1,000 outcomes
# (a Python predicate 0.2 ms, a wrap model_serializer 1.1 ms).
_OMITTED_IF_NONE = Field(exclude_if=functools.partial(operator.is_, None))


class FeedExport(BaseModel):
    """Where an incremental export stands in its feed."""

    feed: str
    export: int
    """The export's number in the feed, 1 for the first."""
    complete: bool
    """True when the file holds every row, not only the changes: a feed's first export, or one
    whose stored cursor could not be used (xids.usable_cursor)."""


class PartFile(BaseModel):
    """One file of an export written in parts."""

    path: str
    rows: int
    bytes: int
    sha256: str


class ExportResult(BaseModel):
    """The file written: its path, rows, size and SHA-256. An export in parts (`parts` > 1) has
    no single file: `path` and `sha256` are then its manifest's, which lists every part, `rows`
    and `bytes` the parts' totals, and `parts` each part's file."""

    dataset: str
    path: str
    rows: int
    bytes: int
    sha256: str
    format: str
    compressed: bool
    incremental: FeedExport | None = None
    parts: Annotated[list[PartFile] | None, _OMITTED_IF_NONE] = None


class TransferItem(Payload):
    id: UUID
    from_account: BigInt
    to_account: BigInt
    amount_cents: BigInt


class TransferPayload(Payload):
    """`transfer_funds`: up to 10,000 transfers applied in order, each all-or-nothing."""

    transfers: Annotated[list[TransferItem], Field(min_length=1)]

    @field_validator("transfers", mode="before")
    @classmethod
    def _bounded(cls, transfers: Any) -> Any:
        if isinstance(transfers, list) and len(transfers) > MAX_TRANSFERS:
            raise ValueError(
                f"at most {MAX_TRANSFERS} transfers per job, got {len(transfers)}; split the batch"
            )
        return transfers


class TransferOutcome(BaseModel):
    """One transfer's outcome, in input order.

    - `applied` (reason None) or `rejected` with the reason of the rule it broke. The same id
      sent again with other accounts or amount is rejected as `id reused with different
      content`, and nothing is written.
    - `duplicate`: the id came earlier in the batch (`repeated in this batch`) or another job
      recorded it (`already recorded`); for the latter, `recorded_status` and
      `recorded_reason` tell what the ledger holds for it (`applied`/None, or `rejected` and
      why). Nothing is applied again.

    A run of the same job again (same arq job id, after a crash between its commit and arq
    storing its result) reports every transfer exactly as the first run did, from the ledger.
    `recorded_status` and `recorded_reason` appear in the JSON only when set, so outcomes without
    them look as they always did.
    """

    id: UUID
    status: Literal["applied", "rejected", "duplicate"]
    reason: str | None = None
    recorded_status: Annotated[Literal["applied", "rejected"] | None, _OMITTED_IF_NONE] = None
    recorded_reason: Annotated[str | None, _OMITTED_IF_NONE] = None


class TransferResult(BaseModel):
    """`transfer_funds`: how many transfers were applied, rejected and duplicate, and each one's
    outcome in input order. A replay of the same job returns what its first run returned."""

    applied: int
    rejected: int
    duplicate: int
    results: list[TransferOutcome]


class NightlyResult(BaseModel):
    exports: list[ExportResult]
    deleted: list[str]

    def log_fields(self) -> dict[str, Any]:
        """For the canonical line: totals, each dataset's rows, bytes and file, what was deleted."""
        out: dict[str, Any] = {
            "datasets": [export.dataset for export in self.exports],
            "rows": sum(export.rows for export in self.exports),
            "bytes": sum(export.bytes for export in self.exports),
        }
        for export in self.exports:
            out.update(
                {
                    f"{export.dataset}_rows": export.rows,
                    f"{export.dataset}_bytes": export.bytes,
                    f"{export.dataset}_path": export.path,
                }
            )
        out.update(deleted=self.deleted, deleted_count=len(self.deleted))
        return out
