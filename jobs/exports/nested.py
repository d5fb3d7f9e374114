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
several times the work of a row. Those objects outlive the garbage collector's young generations
without ever needing it (reference counting frees them), and the collections that walked them
took a quarter of the export's time: while an export runs, the young generation's threshold is
raised (`GC_YOUNG_THRESHOLD`). The lines are written from each object's `__dict__` through one
template per object type and a converter per column, not through a dict and the JSON encoder.
PostgreSQL builds the same lines (row_to_json with json_agg) several times faster; README,
"Measured design choices".

Each line is the customer's export columns, in the customers dataset's order, then `accounts`:
an array (`[]` for none) of each account's columns, in account id order, without the
customer's key it repeats. Values are written as PostgreSQL's `row_to_json` writes them in the
flat JSON Lines export, so both agree: timestamps ISO-8601 in UTC with trailing zeros of the
fraction dropped, `infinity` as a string, non-ASCII text as is.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring
from operator import call, itemgetter
from typing import Any

from sqlalchemy import ColumnElement, FromClause, Select, TypeDecorator, select
from sqlalchemy.ext.asyncio import AsyncScalarResult, AsyncSession
from sqlalchemy.orm import QueryableAttribute, selectinload

from jobs.exports.stream import Progress, Sink, Snapshot
from jobs.registry import Dataset
from jobs.schema import Account, Customer

# Customers per partition (`yield_per`): at most this many customers and their accounts are alive
# at a time (about 12 MB with 1.5 accounts each). A partition costs four round trips (SQLAlchemy's
# cursor FETCHes 50 rows, then the rest; the accounts come in two IN lists of 500). Measured on
# 10,000 customers: 500 ran as fast, 2,500 and 5,000 no faster and held 2-3 times the memory.
YIELD_PER = 1_000
# While a nested export runs, the collector's youngest generation waits for this many more new
# objects than freed ones (Python's default: 700). A partition's objects are freed by reference
# counting, not by the collector, but they outlive the young generations' collections, which then
# walk them over and over and promote them to full collections: a quarter to a third of the
# export's time went there. A partition keeps a few tens of thousands alive, so at this threshold
# the export triggers almost no collection (README, "Measured design choices").
GC_YOUNG_THRESHOLD = 100_000


@dataclass(frozen=True, slots=True)
class Nesting:
    """A relationship whose rows go into each parent's line, as an array under `name`."""

    name: str
    relationship: QueryableAttribute[Any]
    columns: tuple[str, ...]
    """The child's columns, in table order; its foreign key to the parent is left out."""
    table: FromClause
    """The child's table."""


ACCOUNTS = Nesting(
    name="accounts",
    relationship=Customer.accounts,
    columns=tuple(c.name for c in Account.__table__.columns if c.name != "customer_external_id"),
    table=Account.__table__,
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


# Timestamps already written, with their JSON: rows written by one transaction share its `now()`
# (a bulk load's `updated_at`), and isoformat() is the dearest part of a line. Cleared when full.
_TIMESTAMPS: dict[datetime, str] = {}
_TIMESTAMPS_KEPT = 4096


def _quoted_timestamp(value: datetime) -> str:
    text = _TIMESTAMPS.get(value)
    if text is None:
        if len(_TIMESTAMPS) >= _TIMESTAMPS_KEPT:
            _TIMESTAMPS.clear()
        # Digits, signs, T, colons, a dot or letters: nothing to escape.
        text = _TIMESTAMPS[value] = f'"{pg_timestamp(value)}"'
    return text


# Each value's JSON by its exact type, as the encoder above writes it (the same C string escaper,
# int.__repr__); any other type (bool, float, …) goes through the encoder itself.
_BY_TYPE: dict[type, Callable[[Any], str]] = {
    str: encode_basestring,
    int: int.__repr__,
    datetime: _quoted_timestamp,
    type(None): lambda _: "null",
}


def _any_value(value: object) -> str:
    return _BY_TYPE.get(type(value), _encode)(value)


def _converter(column: ColumnElement[Any]) -> Callable[[Any], str]:
    """How a column's values become JSON: straight by its type where every value has that type
    (NOT NULL, a plain int, str or timestamp column), else by each value's type."""
    kind = column.type
    if getattr(column, "nullable", True) or isinstance(kind, TypeDecorator):
        return _any_value
    try:
        return _BY_TYPE.get(kind.python_type, _any_value)  # bool, float, …: by each value
    except NotImplementedError:
        return _any_value


def _members(table: FromClause, columns: Sequence[str]) -> Callable[[object], str]:
    """A function writing `"column":value,…` for a loaded object, from its `__dict__`, where
    SQLAlchemy keeps the values it loaded: no instrumented attribute access, no dict and no
    encoder call per object, each value through its column's converter (README, "Measured
    design choices")."""
    template = ",".join(encode_basestring(name).replace("%", "%%") + ":%s" for name in columns)
    get = itemgetter(*columns)
    converters = tuple(_converter(table.c[name]) for name in columns)
    if len(columns) == 1:  # itemgetter of one key returns the value itself
        (convert,) = converters
        return lambda obj: template % convert(get(obj.__dict__))
    return lambda obj: template % tuple(map(call, converters, get(obj.__dict__)))


def line_writer(dataset: Dataset, include: Sequence[Nesting]) -> Callable[[object], str]:
    """Turns one loaded parent (with its nestings loaded) into its JSON line, without newline."""
    parent = _members(dataset.table, dataset.export_columns)
    children = [
        (n.name, f",{encode_basestring(n.name)}:[", _members(n.table, n.columns)) for n in include
    ]

    def write(obj: object) -> str:
        state = obj.__dict__
        parts = ["{", parent(obj)]
        for name, key, child in children:
            items = state[name]
            parts.append(key)
            if items:
                parts.append("{" + "},{".join([child(item) for item in items]) + "}")
            parts.append("]")
        parts.append("}")
        return "".join(parts)

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
    with _fewer_collections():
        result = await session.stream_scalars(query)
        return await _stream(
            session, result, write=write, sink=sink, progress=progress, on_partition=on_partition
        )


async def _stream(
    session: AsyncSession,
    result: AsyncScalarResult[Any],
    *,
    write: Callable[[object], str],
    sink: Sink,
    progress: Progress,
    on_partition: Callable[[AsyncSession], None] | None,
) -> int:
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


class _Collections:
    """The young-generation threshold, raised while any nested export of this process runs and
    put back when the last one ends. Other work in the process meanwhile has its cyclic garbage
    collected later (after up to GC_YOUNG_THRESHOLD new objects), not never."""

    running = 0
    saved: tuple[int, int, int] | None = None


@contextmanager
def _fewer_collections() -> Iterator[None]:
    if _Collections.running == 0:
        young, *older = _Collections.saved = gc.get_threshold()
        if 0 < young < GC_YOUNG_THRESHOLD:  # 0: collection is off; leave it so
            gc.set_threshold(GC_YOUNG_THRESHOLD, *older)
    _Collections.running += 1
    try:
        yield
    finally:
        _Collections.running -= 1
        if _Collections.running == 0 and _Collections.saved is not None:
            gc.set_threshold(*_Collections.saved)
