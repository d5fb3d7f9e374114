"""Bad input to import_file, one case each: a clear error or a per-row reject, never half a load."""

from __future__ import annotations

import gzip
import re
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.errors import InputFileError, InvalidPayload, PathNotAllowed
from tests.support.import_files import (
    CUSTOMER_HEADER,
    count,
    customer_line,
    rejects,
    rows,
    run_import,
    write,
)
from worker.settings import Settings

ALL_COLUMNS = "external_id, email, full_name, country, created_at"


async def nothing_loaded(engine: AsyncEngine) -> None:
    for table in ("customers", "accounts", "import_rejects", "import_runs"):
        assert await count(engine, table) == 0, table


async def fails(ctx: dict[str, Any], error: type[Exception], message: str, **kwargs: Any) -> None:
    with pytest.raises(error) as caught:
        await run_import(ctx, **kwargs)
    assert str(caught.value) == message


# The file as a whole


async def test_empty_file(ctx: dict[str, Any], settings: Settings, engine: AsyncEngine) -> None:
    (settings.import_dir / "empty.csv").write_bytes(b"")
    await fails(
        ctx,
        InputFileError,
        "empty.csv: the file is empty; expected a header row such as "
        "external_id,email,full_name,country,created_at",
        path="empty.csv",
    )
    await nothing_loaded(engine)


async def test_header_only_loads_nothing_and_says_so(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine
) -> None:
    write(settings, "header.csv", CUSTOMER_HEADER)
    result = await run_import(ctx, path="header.csv")
    assert {k: v for k, v in result.items() if k != "import_id"} == {
        "dataset": "customers",
        "rows_read": 0,
        "inserted": 0,
        "updated": 0,
        "skipped": 0,
        "rejected": 0,
    }
    assert await count(engine, "customers") == 0
    assert await count(engine, "import_runs") == 1


async def test_missing_required_column(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine
) -> None:
    write(settings, "c.csv", b"external_id,full_name,country", b"c1,Ada,GB")
    await fails(
        ctx,
        InputFileError,
        "c.csv: missing required column 'email' in the header; customers files need "
        "external_id, email, full_name, country",
        path="c.csv",
    )
    await nothing_loaded(engine)


async def test_unknown_column(ctx: dict[str, Any], settings: Settings, engine: AsyncEngine) -> None:
    write(settings, "c.csv", CUSTOMER_HEADER + b",phone", customer_line(1) + b",555")
    await fails(
        ctx,
        InputFileError,
        f"c.csv: unknown column 'phone' in the header; customers files take {ALL_COLUMNS}",
        path="c.csv",
    )
    await nothing_loaded(engine)


async def test_column_named_twice(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine
) -> None:
    write(settings, "c.csv", CUSTOMER_HEADER + b",email", customer_line(1) + b",x@example.com")
    await fails(
        ctx, InputFileError, "c.csv: column 'email' appears twice in the header", path="c.csv"
    )
    await nothing_loaded(engine)


async def test_quote_never_closed(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine
) -> None:
    write(
        settings,
        "c.csv",
        CUSTOMER_HEADER,
        customer_line(1),
        b'c2,b@example.com,"Bob,GB,2020-01-01',
        *(customer_line(i) for i in range(3, 50)),
    )
    await fails(
        ctx,
        InputFileError,
        "c.csv: line 3: a quoted field opened on this line is never closed",
        path="c.csv",
    )
    await nothing_loaded(engine)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "c.csv.gz",
            b"external_id,email\n",
            "c.csv.gz: not a gzip file, though its name ends in .gz",
        ),
        (
            "c.csv.gz",
            gzip.compress(CUSTOMER_HEADER + b"\n" + customer_line(1) * 200)[:-20],
            "c.csv.gz: the gzip data ends early (truncated file?)",
        ),
    ],
)
async def test_gzip_truncated_or_not_gzip(
    ctx: dict[str, Any],
    settings: Settings,
    engine: AsyncEngine,
    name: str,
    content: bytes,
    message: str,
) -> None:
    (settings.import_dir / name).write_bytes(content)
    await fails(ctx, InputFileError, message, path=name)
    await nothing_loaded(engine)


async def test_gzip_corrupt(ctx: dict[str, Any], settings: Settings, engine: AsyncEngine) -> None:
    data = bytearray(
        gzip.compress(
            CUSTOMER_HEADER + b"\n" + b"".join(customer_line(i) + b"\n" for i in range(500))
        )
    )
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8
    (settings.import_dir / "c.csv.gz").write_bytes(bytes(data))
    with pytest.raises(InputFileError, match=r"^c\.csv\.gz: the gzip data is corrupt \("):
        await run_import(ctx, path="c.csv.gz")
    await nothing_loaded(engine)


# Rows: quarantined, the rest loads


async def loads_but_rejects(
    ctx: dict[str, Any], engine: AsyncEngine, bad: bytes, reason: str, raw: str, **kwargs: Any
) -> None:
    result = await run_import(ctx, path="c.csv", max_reject_ratio=0.5, **kwargs)
    assert (result["rows_read"], result["inserted"], result["rejected"]) == (3, 2, 1)
    assert [r[0] for r in await rows(engine, "select external_id from customers order by 1")] == [
        "c000001",
        "c000003",
    ]
    assert await rejects(engine) == [(3, reason, raw)]


async def test_wrong_field_count(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine
) -> None:
    bad = b"c2,b@example.com,Bob,GB,2020-01-01,surplus"
    write(settings, "c.csv", CUSTOMER_HEADER, customer_line(1), bad, customer_line(3))
    await loads_but_rejects(ctx, engine, bad, "has 6 fields; the header has 5", bad.decode())


async def test_nul_byte(ctx: dict[str, Any], settings: Settings, engine: AsyncEngine) -> None:
    bad = b"c2,b@example.com,B\x00b,GB,2020-01-01"
    write(settings, "c.csv", CUSTOMER_HEADER, customer_line(1), bad, customer_line(3))
    await loads_but_rejects(
        ctx, engine, bad, "holds a NUL byte", "c2,b@example.com,B\\x00b,GB,2020-01-01"
    )


async def test_invalid_utf8(ctx: dict[str, Any], settings: Settings, engine: AsyncEngine) -> None:
    bad = b"c2,b@example.com,Zo\xeb,GB,2020-01-01"
    write(settings, "c.csv", CUSTOMER_HEADER, customer_line(1), bad, customer_line(3))
    await loads_but_rejects(
        ctx,
        engine,
        bad,
        "not valid UTF-8 (byte 20 of the line is 0xeb)",
        "c2,b@example.com,Zo\\xeb,GB,2020-01-01",
    )


async def test_ten_megabyte_field(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine
) -> None:
    bad = b"c2,b@example.com," + b"x" * (10 << 20) + b",GB,2020-01-01"
    write(settings, "c.csv", CUSTOMER_HEADER, customer_line(1), bad, customer_line(3))
    result = await run_import(ctx, path="c.csv", max_reject_ratio=0.5)
    assert (result["rows_read"], result["inserted"], result["rejected"]) == (3, 2, 1)
    # The quarantine keeps the start of the line; the reason says how long it was.
    assert await rejects(engine) == [
        (
            3,
            "not valid CSV: a field is longer than 131072 characters "
            f"(line of {len(bad)} bytes, first 4096 kept)",
            bad[:4096].decode(),
        )
    ]


async def test_crlf_line_endings(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine
) -> None:
    write(
        settings,
        "c.csv",
        CUSTOMER_HEADER,
        customer_line(1),
        customer_line(2, full_name='"Ritchie,\r\n Jr."'),
        customer_line(3, country="de"),
        end=b"\r\n",
    )
    result = await run_import(ctx, path="c.csv")
    assert (result["rows_read"], result["inserted"], result["rejected"]) == (3, 3, 0)
    assert await rows(engine, "select full_name, country from customers order by 1") == [
        ("Customer 1", "GB"),
        ("Customer 3", "DE"),
        ("Ritchie,\r\n Jr.", "GB"),
    ]


async def test_byte_order_mark(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine
) -> None:
    write(settings, "c.csv", b"\xef\xbb\xbf" + CUSTOMER_HEADER, customer_line(1))
    result = await run_import(ctx, path="c.csv")
    assert result["inserted"] == 1
    assert await rows(engine, "select external_id from customers") == [("c000001",)]


async def test_rows_of_the_wrong_type(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine
) -> None:
    write(
        settings,
        "a.csv",
        b"id,currency,balance_cents",
        b"1,EUR,abc",
        b"2,EUR,1.5",
        b"x,EUR,1",
        b"4,EUR,7",
    )
    result = await run_import(ctx, dataset="accounts", path="a.csv", max_reject_ratio=1)
    assert (result["inserted"], result["rejected"]) == (1, 3)
    assert [r[:2] for r in await rejects(engine)] == [
        (2, "balance_cents: must be an integer"),
        (3, "balance_cents: must be an integer"),
        (4, "id: must be an integer"),
    ]


# Paths and datasets: refused before anything is read


async def test_missing_file(ctx: dict[str, Any], settings: Settings, engine: AsyncEngine) -> None:
    await fails(
        ctx,
        InputFileError,
        f"nope.csv: no such file in the import directory {settings.import_dir}",
        path="nope.csv",
    )
    await nothing_loaded(engine)


async def test_path_with_dotdot(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine
) -> None:
    (settings.import_dir.parent / "secret.csv").write_bytes(CUSTOMER_HEADER + b"\n")
    with pytest.raises(PathNotAllowed, match=r"^path '\.\./secret\.csv' is outside "):
        await run_import(ctx, path="../secret.csv")
    await nothing_loaded(engine)


async def test_absolute_path_outside(ctx: dict[str, Any], engine: AsyncEngine) -> None:
    with pytest.raises(PathNotAllowed, match=r"^path '/etc/passwd' is outside "):
        await run_import(ctx, path="/etc/passwd")
    await nothing_loaded(engine)


async def test_symlink_pointing_outside(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine
) -> None:
    outside = settings.import_dir.parent / "outside.csv"
    outside.write_bytes(CUSTOMER_HEADER + b"\n" + customer_line(1) + b"\n")
    (settings.import_dir / "link.csv").symlink_to(outside)
    with pytest.raises(PathNotAllowed, match=r"^path 'link\.csv' is outside "):
        await run_import(ctx, path="link.csv")
    await nothing_loaded(engine)


async def test_directory_instead_of_a_file(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine
) -> None:
    (settings.import_dir / "folder.csv").mkdir()
    await fails(
        ctx, InputFileError, "folder.csv: not a regular file (a directory)", path="folder.csv"
    )
    await nothing_loaded(engine)


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        (
            "nope",
            "invalid payload: dataset: unknown dataset 'nope'; known: accounts, customers, "
            "transfers",
        ),
        (
            "customers; drop table customers",
            "invalid payload: dataset: unknown dataset 'customers; drop table customers'; known: "
            "accounts, customers, transfers",
        ),
        (
            "transfers",
            "invalid payload: dataset: 'transfers' cannot be imported or upserted; use one of "
            "accounts, customers",
        ),
    ],
)
async def test_unknown_or_sql_looking_dataset(
    ctx: dict[str, Any], settings: Settings, engine: AsyncEngine, dataset: str, message: str
) -> None:
    write(settings, "c.csv", CUSTOMER_HEADER, customer_line(1))
    with pytest.raises(InvalidPayload) as caught:
        await run_import(ctx, dataset=dataset, path="c.csv")
    assert str(caught.value) == message
    await nothing_loaded(engine)
    assert await rows(engine, "select to_regclass('customers')::text") == [("customers",)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "merge"}, "invalid payload: mode: Input should be 'upsert' or 'insert'"),
        (
            {"max_reject_ratio": 2},
            "invalid payload: max_reject_ratio: Input should be less than or equal to 1",
        ),
        ({"path": ""}, "invalid payload: path: String should have at least 1 character"),
    ],
)
async def test_bad_arguments(
    ctx: dict[str, Any], engine: AsyncEngine, kwargs: dict[str, Any], message: str
) -> None:
    kwargs.setdefault("path", "c.csv")
    with pytest.raises(InvalidPayload, match=f"^{re.escape(message)}$"):
        await run_import(ctx, **kwargs)
    await nothing_loaded(engine)
