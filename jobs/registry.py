"""The fixed registry of datasets. Table and column names come from here, never from a payload."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table

from jobs import schema as tables
from jobs.errors import UnknownDataset
from jobs.validation import validate_account, validate_customer

RowValidator = Callable[..., dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Dataset:
    name: str
    table: Table
    key: str
    """The natural key: ON CONFLICT target, and 'last occurrence wins' within one file."""
    input_columns: tuple[str, ...]
    """Columns an import file or upsert row may carry (CSV header names)."""
    required_columns: frozenset[str]
    since_column: str
    """`since` in exports compares against this column."""
    validate: RowValidator | None
    """Row rules for imports and upserts; None for a dataset that is only exported."""

    @property
    def writable(self) -> bool:
        return self.validate is not None

    @property
    def export_columns(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.table.columns)

    def check_row(self, row: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
        assert self.validate is not None
        return self.validate(row, now=now)


DATASETS: dict[str, Dataset] = {
    "customers": Dataset(
        name="customers",
        table=tables.customers,
        key="external_id",
        input_columns=("external_id", "email", "full_name", "country", "created_at"),
        required_columns=frozenset({"external_id", "email", "full_name", "country"}),
        since_column="updated_at",
        validate=validate_customer,
    ),
    "accounts": Dataset(
        name="accounts",
        table=tables.accounts,
        key="id",
        input_columns=("id", "customer_external_id", "currency", "balance_cents"),
        required_columns=frozenset({"id", "currency", "balance_cents"}),
        since_column="updated_at",
        validate=validate_account,
    ),
    "transfers": Dataset(
        name="transfers",
        table=tables.transfers,
        key="id",
        input_columns=(),
        required_columns=frozenset(),
        since_column="created_at",
        validate=None,
    ),
}


def get_dataset(name: str, *, writable: bool = False) -> Dataset:
    """The dataset called `name`; UnknownDataset (with the known names) otherwise."""
    dataset = DATASETS.get(name)
    if dataset is None:
        known = ", ".join(sorted(DATASETS))
        raise UnknownDataset(f"unknown dataset {name[:64]!r}; known: {known}")
    if writable and not dataset.writable:
        writable_names = ", ".join(sorted(n for n, d in DATASETS.items() if d.writable))
        raise UnknownDataset(
            f"{name!r} cannot be imported or upserted; use one of {writable_names}"
        )
    return dataset
