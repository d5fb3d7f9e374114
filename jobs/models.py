"""Job payloads and results: the worker validates with these, and the client enqueues with them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
)

from jobs.errors import UnknownDataset
from jobs.registry import get_dataset
from jobs.validation import BIGINT_MAX

MAX_UPSERT_ROWS = 10_000
MAX_TRANSFERS = 10_000


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


class ExportPayload(Payload):
    """`export_dataset`: stream a dataset to a file under the export dir."""

    dataset: DatasetName
    format: Literal["csv", "jsonl"] = "csv"
    compress: StrictBool = False
    since: datetime | None = None

    @field_validator("since", mode="before")
    @classmethod
    def _iso_8601(cls, value: Any) -> Any:
        # Left to pydantic, "yesterday" is "input is too short" and "1700000000" is taken as
        # Unix seconds; the contract is ISO-8601, and the message says so.
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(
                    "Input should be a valid datetime in ISO-8601 form, e.g. 2026-11-21T00:00:00Z"
                ) from None
        if isinstance(value, int | float):
            raise ValueError("Input should be a valid datetime as an ISO-8601 string, not a number")
        return value


class ExportResult(BaseModel):
    dataset: str
    path: str
    rows: int
    bytes: int
    sha256: str
    format: str
    compressed: bool


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
    id: UUID
    status: Literal["applied", "rejected", "duplicate"]
    reason: str | None = None


class TransferResult(BaseModel):
    applied: int
    rejected: int
    duplicate: int
    results: list[TransferOutcome]


class NightlyResult(BaseModel):
    exports: list[ExportResult]
    deleted: list[str]
