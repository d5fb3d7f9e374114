"""`export_dataset(include=["accounts"])`: customers with their accounts nested, loaded with
selectinload one yield_per partition at a time (jobs/exports/nested.py), on real PostgreSQL.

The statement count is the N+1 check: a `before_cursor_execute` listener on the engine counts
what the export sends, which must grow with the partitions and not with the customers. Peak
memory is checked in test_export_memory.py.
"""

from __future__ import annotations

import json
import typing
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert, text
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from jobs import schema as tables
from jobs.errors import InvalidPayload
from jobs.exports import nested
from jobs.exports.job import export_dataset
from jobs.exports.stream import snapshot
from jobs.models import ExportPayload, ExportResult
from jobs.registry import get_dataset
from jobs.schema import Customer
from worker.cli import build_parser
from worker.cli.payloads import payload_from_args
from worker.context import AppContext
from worker.errors import BadArgument
from worker.runner import RunHandle, execute

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def export(app: AppContext, **payload: Any) -> ExportResult:
    run = RunHandle(app=app, job_id=uuid.uuid4().hex, job_try=1)
    return await export_dataset.impl(run, ExportPayload.model_validate(payload))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def lines_of(result: ExportResult) -> list[str]:
    data = Path(result.path).read_text(encoding="utf-8")
    assert data == "" or data.endswith("\n")
    return data.splitlines()


async def seed_small(engine: AsyncEngine) -> None:
    """Three customers: C1 with two accounts (inserted out of id order), C2 with none, C3 with
    one; and an account of no customer, which no line holds."""
    async with engine.begin() as conn:
        await conn.execute(
            insert(tables.customers),
            [
                {
                    "id": i,
                    "external_id": f"C{i}",
                    "email": f"c{i}@example.com",
                    "full_name": name,
                    "country": "GB",
                    "created_at": T0 + timedelta(hours=i),
                    "updated_at": T0 + timedelta(days=i, microseconds=500_000 * i),
                }
                for i, name in ((1, 'Zoë "Q" O\'Brien'), (2, "Back\\slash\nNewline"), (3, "名前"))
            ],
        )
        await conn.execute(
            insert(tables.accounts),
            [
                {
                    "id": account_id,
                    "customer_external_id": owner,
                    "currency": "EUR",
                    "balance_cents": 2**62 + account_id,
                    "updated_at": T0 + timedelta(seconds=account_id, microseconds=120),
                }
                for account_id, owner in ((12, "C1"), (7, "C1"), (30, "C3"), (40, None))
            ],
        )


async def seed_many(engine: AsyncEngine, customers: int) -> int:
    """`customers` customers; odd ones have two accounts, even ones one. Returns the accounts."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "insert into customers (id, external_id, email, full_name, country, created_at)"
                " select i, 'C' || i, 'c' || i || '@example.com', 'Customer ' || i, 'US', now()"
                " from generate_series(1, cast(:n as int)) as i"
            ),
            {"n": customers},
        )
        inserted = await conn.execute(
            text(
                "insert into accounts (id, customer_external_id, currency, balance_cents)"
                " select a, 'C' || i, 'EUR', a from generate_series(1, cast(:n as int)) as i,"
                " generate_series(2 * i - 1, 2 * i - 1 + i % 2) as a"
            ),
            {"n": customers},
        )
    return inserted.rowcount


async def test_each_customer_line_holds_its_accounts_in_id_order(
    app: AppContext, engine: AsyncEngine
) -> None:
    await seed_small(engine)
    result = await export(app, dataset="customers", format="jsonl", include=["accounts"])
    assert (result.rows, result.format) == (3, "jsonl")
    assert lines_of(result) == [
        '{"id":1,"external_id":"C1","email":"c1@example.com","full_name":"Zoë \\"Q\\" O\'Brien",'
        '"country":"GB","created_at":"2026-01-01T01:00:00+00:00",'
        '"updated_at":"2026-01-02T00:00:00.5+00:00","accounts":['
        '{"id":7,"currency":"EUR","balance_cents":4611686018427387911,'
        '"updated_at":"2026-01-01T00:00:07.00012+00:00"},'
        '{"id":12,"currency":"EUR","balance_cents":4611686018427387916,'
        '"updated_at":"2026-01-01T00:00:12.00012+00:00"}]}',
        '{"id":2,"external_id":"C2","email":"c2@example.com",'
        '"full_name":"Back\\\\slash\\nNewline","country":"GB",'
        '"created_at":"2026-01-01T02:00:00+00:00","updated_at":"2026-01-03T00:00:01+00:00",'
        '"accounts":[]}',
        '{"id":3,"external_id":"C3","email":"c3@example.com","full_name":"名前","country":"GB",'
        '"created_at":"2026-01-01T03:00:00+00:00","updated_at":"2026-01-04T00:00:01.5+00:00",'
        '"accounts":[{"id":30,"currency":"EUR","balance_cents":4611686018427387934,'
        '"updated_at":"2026-01-01T00:00:30.00012+00:00"}]}',
    ]
    manifest = read_json(Path(result.path + ".manifest.json"))
    assert manifest["include"] == {"accounts": ["id", "currency", "balance_cents", "updated_at"]}
    assert manifest["columns"] == list(get_dataset("customers").export_columns)


async def test_lines_agree_with_the_flat_exports_byte_for_byte(
    app: AppContext, engine: AsyncEngine
) -> None:
    """Python renders what PostgreSQL's row_to_json renders: the customer part of each nested
    line is the flat JSON Lines export's line, and each account the accounts export's object
    without its customer key."""
    await seed_small(engine)
    async with engine.begin() as conn:  # PostgreSQL's infinities, as timestamps can hold them
        await conn.execute(text("update customers set updated_at = 'infinity' where id = 2"))
        await conn.execute(text("update accounts set updated_at = '-infinity' where id = 7"))
    nested_lines = lines_of(
        await export(app, dataset="customers", format="jsonl", include=["accounts"])
    )
    flat_export = await export(app, dataset="customers", format="jsonl")
    flat = {json.loads(line)["id"]: line for line in lines_of(flat_export)}
    accounts = {
        json.loads(line)["id"]: line
        for line in lines_of(await export(app, dataset="accounts", format="jsonl"))
    }
    assert '"updated_at":"infinity"' in flat[2]
    for line in nested_lines:
        head, _, tail = line.partition(',"accounts":[')
        assert head + "}" == flat[json.loads(line)["id"]]
        for account in json.loads("[" + tail[:-1]):
            expected = json.loads(accounts[account["id"]])
            del expected["customer_external_id"]
            assert account == expected
            assert json.dumps(account, separators=(",", ":"), ensure_ascii=False) in line
    assert '"updated_at":"-infinity"' in nested_lines[0]


async def test_since_selects_customers_by_their_own_updated_at(
    app: AppContext, engine: AsyncEngine
) -> None:
    await seed_small(engine)
    result = await export(
        app,
        dataset="customers",
        format="jsonl",
        include=["accounts"],
        since=(T0 + timedelta(days=2)).isoformat(),
    )
    assert [json.loads(line)["id"] for line in lines_of(result)] == [2, 3]
    assert [a["id"] for a in json.loads(lines_of(result)[1])["accounts"]] == [30]


@pytest.fixture
def statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every statement sent through the engine while the test runs: the design notes' N+1
    detector, a before_cursor_execute listener on the sync engine under the async one."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(" ".join(statement.split()))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


@pytest.mark.parametrize(
    ("customers", "yield_per", "account_loads"),
    [
        (1_000, 100, 10),  # one selectin statement per partition
        (2_000, 100, 20),  # twice the customers, twice the partitions
        (1_000, 1_000, 2),  # one partition: SQLAlchemy sends its IN list in chunks of 500
    ],
)
async def test_statements_grow_with_partitions_not_customers(
    app: AppContext,
    engine: AsyncEngine,
    statements: list[str],
    monkeypatch: pytest.MonkeyPatch,
    customers: int,
    yield_per: int,
    account_loads: int,
) -> None:
    accounts = await seed_many(engine, customers)
    monkeypatch.setattr(nested, "YIELD_PER", yield_per)
    statements.clear()
    result = await export(app, dataset="customers", format="jsonl", include=["accounts"])
    assert result.rows == customers
    loaded = [json.loads(line)["accounts"] for line in lines_of(result)]
    assert sum(len(a) for a in loaded) == accounts == customers * 3 // 2

    customer_reads = [s for s in statements if s.startswith("SELECT customers.id,")]
    account_reads = [s for s in statements if "JOIN accounts ON" in s]
    assert len(customer_reads) == 1, customer_reads
    assert "ORDER BY customers.id" in customer_reads[0]
    assert len(account_reads) == account_loads, account_reads[:3]
    # The snapshot's own two (set local timezone, clock_timestamp()), and nothing else.
    assert len(statements) == 2 + 1 + account_loads, statements


async def test_the_identity_map_holds_one_partition_at_most(
    app: AppContext, engine: AsyncEngine
) -> None:
    """Loaded objects leave the session's (weak) identity map with their partition: it never
    holds more than one partition's customers and their accounts."""
    await seed_many(engine, 1_000)
    sizes: list[int] = []
    written: list[bytes] = []

    async def sink(data: bytes) -> None:
        written.append(data)

    async def progress(rows: int) -> None:
        pass

    async with snapshot(app.sessionmaker) as snap:
        rows = await nested.stream_nested_jsonl(
            snap,
            dataset=get_dataset("customers"),
            include=["accounts"],
            since=None,
            sink=sink,
            progress=progress,
            yield_per=100,
            on_partition=lambda session: sizes.append(len(session.identity_map)),
        )
        left = len(snap.session.identity_map)
    assert rows == 1_000
    assert len(sizes) == 10
    assert sizes == [100 + 150] * 10  # 100 customers, 150 accounts, and nothing older
    assert left == 0
    assert b"".join(written).count(b"\n") == 1_000


async def test_expunge_all_mid_stream_breaks_the_result(
    app: AppContext, engine: AsyncEngine
) -> None:
    """Why the export does not `expunge_all()` between partitions (jobs/exports/nested.py): the
    running result keeps loading into the identity map that expunge_all() discards."""
    await seed_many(engine, 300)
    async with app.sessionmaker() as session, session.begin():
        query = nested.nested_query(
            get_dataset("customers"), [nested.ACCOUNTS], since=None, yield_per=100
        )
        result = await session.stream_scalars(query)
        partitions = result.partitions()
        first = await anext(partitions)
        assert len(first) == 100
        session.expunge_all()
        with pytest.raises(InvalidRequestError, match="identity map is no longer valid"):
            await anext(partitions)


async def test_lazy_load_raises_instead_of_querying(app: AppContext, engine: AsyncEngine) -> None:
    """Without selectinload, touching `Customer.accounts` raises at once (lazy="raise")."""
    await seed_small(engine)
    async with app.sessionmaker() as session, session.begin():
        customer = await session.get(Customer, 1)
        assert customer is not None
        with pytest.raises(InvalidRequestError, match=r"'Customer\.accounts' is not available"):
            _ = customer.accounts


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (
            {"dataset": "accounts", "format": "jsonl", "include": ["accounts"]},
            "invalid payload: include: only the customers dataset can include accounts, not "
            "accounts; drop include or export customers",
        ),
        (
            {"dataset": "customers", "include": ["accounts"]},
            "invalid payload: include: accounts can be nested only in format jsonl: a CSV row "
            "holds no arrays; give format jsonl",
        ),
        (
            {
                "dataset": "customers",
                "format": "jsonl",
                "incremental": "crm",
                "include": ["accounts"],
            },
            "invalid payload: include: cannot be combined with incremental: a feed carries the "
            "rows of one table, and a changed account does not change its customer's row; give "
            "one or the other",
        ),
        (
            {"dataset": "customers", "format": "jsonl", "include": ["transfers"]},
            "invalid payload: include.0: Input should be 'accounts'",
        ),
        (
            {"dataset": "customers", "format": "jsonl", "include": "accounts"},
            "invalid payload: include: Input should be a valid list",
        ),
    ],
)
async def test_bad_include_is_refused_before_anything_is_written(
    ctx: dict[str, Any], app: AppContext, payload: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidPayload) as caught:
        await execute(export_dataset, ctx, **payload)
    assert caught.value.message == message
    assert not app.settings.export_dir.exists() or not any(app.settings.export_dir.rglob("*"))


def test_include_appears_in_the_payload_only_when_given() -> None:
    plain = ExportPayload(dataset="customers", format="jsonl")
    assert "include" not in plain.model_dump(mode="json")
    both = ExportPayload.model_validate(
        {"dataset": "customers", "format": "jsonl", "include": ["accounts", "accounts"]}
    )
    assert both.model_dump(mode="json")["include"] == ["accounts"]


def test_the_payload_allows_what_the_export_can_nest() -> None:
    (include,) = typing.get_args(ExportPayload.model_fields["include"].annotation)
    assert set(typing.get_args(include)) == set(nested.NESTINGS["customers"])
    assert set(nested.NESTINGS) == {"customers"}


def enqueue_args(*argv: str) -> dict[str, Any]:
    spec, payload = payload_from_args(build_parser().parse_args(["enqueue", *argv]))
    assert spec.name == "export_dataset"
    return payload.model_dump(mode="json")


def test_cli_include_flag() -> None:
    payload = enqueue_args(
        "export", "--dataset", "customers", "--format", "jsonl", "--include", "accounts"
    )
    assert payload["include"] == ["accounts"]
    assert "include" not in enqueue_args("export", "--dataset", "customers")
    with pytest.raises(BadArgument) as caught:
        enqueue_args("export", "--dataset", "customers", "--include", "accounts")
    assert caught.value.message == (
        "--include: accounts can be nested only in format jsonl: a CSV row holds no arrays; "
        "give format jsonl"
    )
    with pytest.raises(BadArgument) as caught:
        enqueue_args("export", "--dataset", "customers", "--format", "jsonl", "--include", "x")
    assert caught.value.message == "--include: Input should be 'accounts'"


async def test_session_is_the_snapshots(app: AppContext) -> None:
    """The snapshot hands out its session, whose connection is the snapshot's."""
    async with snapshot(app.sessionmaker) as snap:
        assert isinstance(snap.session, AsyncSession)
        assert await snap.session.connection() is snap.conn
