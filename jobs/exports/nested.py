"""Nested JSON Lines: each customer with its accounts, loaded as ORM objects the async way.

`Customer.accounts` is `lazy="raise"`: a relationship touched without an eager load would be
hidden I/O in async code, so it fails at once. The export loads it with `selectinload`, and reads
the customers with `yield_per`: one partition of customers at a time from a server-side cursor,
then one `SELECT … WHERE customers.id IN (…)` for that partition's accounts (SQLAlchemy splits
the IN list into chunks of 500). The statements grow with the partitions, never with the
customers (no N+1). SQLAlchemy documents `yield_per` as compatible with `selectinload`, not
with `joinedload` of a collection, whose rows of one parent could straddle two partitions.

Memory stays flat without releasing anything by hand: the session's identity map holds its
objects weakly, so a partition's customers and accounts leave it once the line writer drops
them. `session.expunge_all()` between partitions is not a safe way to force that: it discards
the identity map the running result is still loading into, and the next partition fails
(InvalidRequestError, "this identity map is no longer valid"). tests/integration/
test_nested_export.py checks the identity map's size per partition; test_export_memory.py the
peak RSS.

The cost is the ORM's: every customer and account is a Python object with its instance state,
several times the work of a row, and those objects outlive the garbage collector's young
generations, so full collections (which walk every object of the process) come every few
partitions. Building the lines is about a tenth of the time. PostgreSQL builds the same lines
(row_to_json with json_agg) several times faster; README, "Measured design choices".

Each line is the customer's export columns, in the customers dataset's order, then `accounts`:
an array (`[]` for none) of each account's columns, in account id order, without the
customer's key it repeats. Values are written as PostgreSQL's `row_to_json` writes them in the
flat JSON Lines export, so both agree: timestamps ISO-8601 in UTC with trailing zeros of the
fraction dropped, `infinity` as a string, non-ASCII text as is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import QueryableAttribute, selectinload

from jobs.exports.stream import Progress, Sink, Snapshot
from jobs.registry import Dataset
from jobs.schema import Account, Customer

# Customers per partition (`yield_per`): at most this many customers and their accounts are alive
# at a time (about 12 MB with 1.5 accounts each). A partition costs four round trips (SQLAlchemy's
# cursor FETCHes 50 rows, then the rest; the accounts come in two IN lists of 500). Measured on
# 10,000 customers: 500 ran as fast, 2,500 and 5,000 no faster and held 2-3 times the memory.
YIELD_PER = 1_000


@dataclass(frozen=True, slots=True)
class Nesting:
    """A relationship whose rows go into each parent's line, as an array under `name`."""

    name: str
    relationship: QueryableAttribute[Any]
    columns: tuple[str, ...]
    """The child's columns, in table order; its foreign key to the parent is left out."""


ACCOUNTS = Nesting(
    name="accounts",
    relationship=Customer.accounts,
    columns=tuple(c.name for c in Account.__table__.columns if c.name != "customer_external_id"),
)
# What each dataset can nest: the payload allows exactly these (jobs/models.py).
NESTINGS: dict[str, dict[str, Nesting]] = {"customers": {"accounts": ACCOUNTS}}
ENTITIES: dict[str, type[Customer]] = {"customers": Customer}


def nestings(dataset: Dataset, include: Sequence[str]) -> list[Nesting]:
    """The nestings `include` names for `dataset`, in the order given, each once."""
    known = NESTINGS.get(dataset.name, {})
    unknown = [name for name in include if name not in known]
    if unknown:
        raise ValueError(f"{dataset.name} cannot include {', '.join(unknown)}")
    return [known[name] for name in dict.fromkeys(include)]


def nested_columns(dataset: Dataset, include: Sequence[str]) -> dict[str, list[str]]:
    """For the manifest: each array's key in a line, and the columns of its objects."""
    return {nesting.name: list(nesting.columns) for nesting in nestings(dataset, include)}


def nested_query(
    dataset: Dataset, include: Sequence[Nesting], *, since: datetime | None, yield_per: int
) -> Select[Customer]:
    """The parents in key order, each nesting loaded per partition with `selectinload`."""
    entity = ENTITIES[dataset.name]
    query = select(entity).options(*(selectinload(nesting.relationship) for nesting in include))
    if since is not None:
        query = query.where(getattr(entity, dataset.since_column) > since)
    return query.order_by(entity.id).execution_options(yield_per=yield_per)


def pg_timestamp(value: datetime) -> str:
    """A timestamptz as PostgreSQL's JSON writes it in UTC: `2026-01-02T00:00:00.5+00:00`.

    asyncpg returns timestamptz values in UTC, and PostgreSQL's infinities as naive
    `datetime.max` and `datetime.min`.
    """
    if value.tzinfo is None:
        if value == datetime.max:
            return "infinity"
        if value == datetime.min:
            return "-infinity"
        value = value.replace(tzinfo=UTC)
    elif value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    text = value.isoformat()
    if value.microsecond % 10 == 0 and value.microsecond:
        # PostgreSQL drops a fraction's trailing zeros; isoformat() always writes six digits.
        text = text[:-6].rstrip("0") + text[-6:]
    return text


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return pg_timestamp(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# One encoder, as row_to_json writes: no spaces, UTF-8 text as is, only datetimes need help.
_encode = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), check_circular=False, default=_json_default
).encode


def _picker(columns: Sequence[str]) -> Callable[[object], dict[str, Any]]:
    """A function building `{column: value}` from a loaded object's `__dict__`, where SQLAlchemy
    keeps the values it loaded: no instrumented attribute access per value (whole lines were
    measured 15% faster than with `getattr`)."""
    get = itemgetter(*columns)
    keys = tuple(columns)
    if len(keys) == 1:
        return lambda obj: {keys[0]: get(obj.__dict__)}
    return lambda obj: dict(zip(keys, get(obj.__dict__), strict=True))


def line_writer(dataset: Dataset, include: Sequence[Nesting]) -> Callable[[object], str]:
    """Turns one loaded parent (with its nestings loaded) into its JSON line, without newline."""
    parent = _picker(dataset.export_columns)
    children = [(nesting.name, _picker(nesting.columns)) for nesting in include]

    def write(obj: object) -> str:
        row = parent(obj)
        state = obj.__dict__
        for name, child in children:
            row[name] = [child(item) for item in state[name]]
        return _encode(row)

    return write


async def stream_nested_jsonl(
    snap: Snapshot,
    *,
    dataset: Dataset,
    include: Sequence[str],
    since: datetime | None,
    sink: Sink,
    progress: Progress,
    yield_per: int | None = None,
    on_partition: Callable[[AsyncSession], None] | None = None,
) -> int:
    """Stream the dataset's rows with their nestings as JSON Lines into `sink`; returns the
    number of parent rows. Runs on the snapshot's session, inside its transaction.

    `on_partition` is called once each partition is rendered, while its objects are still
    alive: the session at its fullest (tests watch the identity map with it).
    """
    include_ = nestings(dataset, include)
    write = line_writer(dataset, include_)
    query = nested_query(dataset, include_, since=since, yield_per=yield_per or YIELD_PER)
    session = snap.session
    result = await session.stream_scalars(query)
    count = 0
    async for batch in result.partitions():
        lines = [write(obj) for obj in batch]
        lines.append("")  # a newline after the last line too
        count += len(batch)
        if on_partition is not None:
            on_partition(session)
        # Drop the partition before the next one loads: at most one is alive at a time.
        del batch
        await sink("\n".join(lines).encode())
        del lines
        await progress(count)
    return count
