"""`etl` arguments to payloads, settings errors, secrets: no servers involved."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobs.errors import describe
from jobs.models import TransferItem
from worker import demo
from worker.cli import build_parser, load_settings
from worker.cli.health import reaching
from worker.cli.payloads import payload_from_args, read_jsonl
from worker.cli.render import Secrets
from worker.errors import BadArgument, SettingsInvalid, Unreachable
from worker.settings import get_settings


def payload_of(*argv: str) -> tuple[str, dict[str, object]]:
    args = build_parser().parse_args(["enqueue", *argv])
    spec, payload = payload_from_args(args)
    return spec.name, payload.model_dump()


def refusal(*argv: str) -> str:
    with pytest.raises(BadArgument) as caught:
        payload_of(*argv)
    return caught.value.message


def test_import_arguments_become_the_import_payload() -> None:
    assert payload_of("import", "--dataset", "customers", "--path", "in/c.csv") == (
        "import_file",
        {"dataset": "customers", "path": "in/c.csv", "mode": "upsert", "max_reject_ratio": 0.05},
    )
    _, payload = payload_of(
        "import", "--dataset", "accounts", "--path", "/srv/inbox/a.csv",
        "--mode", "insert", "--max-reject-ratio", "0",
    )  # fmt: skip
    assert (payload["mode"], payload["max_reject_ratio"]) == ("insert", 0.0)


def test_import_refusals_name_the_argument() -> None:
    assert refusal("import", "--dataset", "orders", "--path", "x.csv") == (
        "--dataset: unknown dataset 'orders'; known: accounts, customers, transfers"
    )
    assert refusal("import", "--dataset", "customers", "--path", "", "--mode", "merge") == (
        "--path: String should have at least 1 character; "
        "--mode: Input should be 'upsert' or 'insert'"
    )


def test_export_arguments() -> None:
    assert payload_of("export", "--dataset", "transfers") == (
        "export_dataset",
        {
            "dataset": "transfers",
            "format": "csv",
            "compress": False,
            "since": None,
            "incremental": None,
        },
    )
    _, fed = payload_of("export", "--dataset", "accounts", "--incremental", "daily-accounts")
    assert fed["incremental"] == "daily-accounts"
    assert refusal(
        "export", "--dataset", "accounts", "--incremental", "x", "--since", "2024-05-01T00:00Z"
    ).startswith("--incremental: ")
    _, payload = payload_of(
        "export", "--dataset", "customers", "--format", "jsonl", "--gzip",
        "--since", "2024-05-01T12:00:00+00:00",
    )  # fmt: skip
    assert payload["compress"] is True
    assert payload["since"] == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert refusal("export", "--dataset", "customers", "--since", "last week").startswith(
        "--since: Input should be a valid datetime"
    )


def test_one_transfer_from_arguments_gets_a_fresh_uuid4() -> None:
    function, payload = payload_of("transfer", "--from", "1", "--to", "2", "--amount", "250")
    assert function == "transfer_funds"
    [item] = payload["transfers"]  # type: ignore[misc]
    assert (item["from_account"], item["to_account"], item["amount_cents"]) == (1, 2, 250)
    assert item["id"].version == 4
    _, again = payload_of("transfer", "--from", "1", "--to", "2", "--amount", "250")
    assert again["transfers"][0]["id"] != item["id"]  # type: ignore[index]

    given = str(uuid.uuid4())
    _, fixed = payload_of("transfer", "--from", "1", "--to", "2", "--amount", "1", "--id", given)
    assert str(fixed["transfers"][0]["id"]) == given  # type: ignore[index]


def test_transfer_refusals() -> None:
    assert refusal("transfer", "--from", "1") == "--to, --amount: required (or give --from-file)"
    assert refusal("transfer", "--from", "1", "--to", "2", "--amount", str(2**63)) == (
        "--amount: Input should be less than or equal to 9223372036854775807"
    )
    assert refusal("transfer", "--from-file", "t.jsonl", "--amount", "5") == (
        "--from-file: give either --from-file or --amount, not both"
    )


def test_transfers_from_a_jsonl_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    first, second = uuid.uuid4(), uuid.uuid4()
    Path("t.jsonl").write_text(
        f'{{"id": "{first}", "from_account": 1, "to_account": 2, "amount_cents": 5}}\n'
        "\n"
        f'{{"id": "{second}", "from_account": 2, "to_account": 1, "amount_cents": 7}}\n'
    )
    _, payload = payload_of("transfer", "--from-file", "t.jsonl")
    assert payload["transfers"] == [
        TransferItem(id=first, from_account=1, to_account=2, amount_cents=5).model_dump(),
        TransferItem(id=second, from_account=2, to_account=1, amount_cents=7).model_dump(),
    ]
    Path("bad.jsonl").write_text(
        f'{{"id": "{first}", "from_account": 1, "to_account": 2, "amount_cents": 5}}\n'
        f'{{"id": "{second}", "from_account": 1, "to_account": 2, "amount_cents": 1.5, "x": 1}}\n'
    )
    assert refusal("transfer", "--file", "bad.jsonl") == (
        "bad.jsonl line 2: amount_cents: Input should be a valid integer; "
        "x: Extra inputs are not permitted"
    )
    Path("empty.jsonl").write_text("\n\n")
    assert refusal("transfer", "--from-file", "empty.jsonl") == (
        "--from-file: empty.jsonl holds no transfers"
    )


def test_upsert_rows_from_a_jsonl_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("ROWS.jsonl").write_text('{"external_id": "a"}\n{"external_id": "b", "country": "DE"}\n')
    assert payload_of("upsert", "--dataset", "customers", "--file", "ROWS.jsonl") == (
        "upsert_rows",
        {
            "dataset": "customers",
            "rows": [{"external_id": "a"}, {"external_id": "b", "country": "DE"}],
        },
    )
    # The dataset is checked before the file is read.
    assert refusal("upsert", "--dataset", "transfers", "--file", "missing.jsonl") == (
        "--dataset: 'transfers' cannot be imported or upserted; use one of accounts, customers"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"a": 1}\n\n{"a": 2\n', "ROWS.jsonl line 3: not JSON"),
        (b'{"a": 1}\n[1, 2]\n', "ROWS.jsonl line 2: a JSON object is expected, got list"),
        (b'{"a": 1}\n{"a": "\xff"}\n', "ROWS.jsonl line 2: not UTF-8 text"),
    ],
)
def test_bad_jsonl_lines_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("ROWS.jsonl").write_bytes(content)
    with pytest.raises(BadArgument) as caught:
        read_jsonl("ROWS.jsonl")
    assert caught.value.message == message


def test_a_missing_or_odd_jsonl_file(tmp_path: Path) -> None:
    with pytest.raises(BadArgument, match=r"^--from-file: .*/nope.jsonl: no such file$"):
        read_jsonl(str(tmp_path / "nope.jsonl"))
    with pytest.raises(BadArgument, match=r"is a directory, not a JSONL file$"):
        read_jsonl(str(tmp_path))


def test_argparse_refuses_what_it_can_type_check(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["enqueue", "transfer", "--amount", "ten"])
    assert caught.value.code == 2
    assert "argument --amount: invalid int value: 'ten'" in capsys.readouterr().err


def test_settings_errors_are_name_and_problem_lines_without_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://etl:hunter2@db/etl")
    monkeypatch.setenv("LOG_FORMAT", "yaml")
    monkeypatch.setenv("ETL_RETRY_BASE", "soon")
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsInvalid) as caught:
            load_settings()
    finally:
        get_settings.cache_clear()
    assert caught.value.message.splitlines() == [
        "DATABASE_URL: scheme 'mysql' is not supported (use postgresql://)",
        "LOG_FORMAT: Input should be 'json' or 'console'",
        "ETL_RETRY_BASE: Input should be a valid number, unable to parse string as a number",
    ]
    assert "hunter2" not in caught.value.message


def test_secrets_are_scrubbed_from_output() -> None:
    secrets = Secrets()
    secrets.add_url("postgresql://etl:p%40ss@db/etl")
    secrets.add_url("redis://:hunter2@cache:6379/0")
    secrets.add_url("not a url")
    text = "auth failed for p@ss and p%40ss; redis said hunter2"
    assert secrets.scrub(text) == "auth failed for *** and ***; redis said ***"


def test_describe_gives_the_innermost_cause_in_one_line() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)")
        except OSError as exc:
            raise RuntimeError("wrapper\nwith a second line") from exc
    except RuntimeError as outer:
        assert describe(outer) == (
            "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 1)"
        )


def test_a_server_out_of_reach_is_one_line_without_its_password() -> None:
    with pytest.raises(Unreachable) as caught, reaching("Redis", "redis://:hunter2@cache:1/0"):
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)")
    assert caught.value.message == (
        "cannot reach Redis at redis://:***@cache:1/0: "
        "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 1)"
    )
    with pytest.raises(Unreachable) as caught, reaching("PostgreSQL", None):
        raise TimeoutError()
    assert caught.value.message == "cannot reach PostgreSQL at (no URL): no answer within 10 s"
    # Not a connection problem: left alone, for main() to report as unexpected.
    with pytest.raises(KeyError), reaching("Redis", "redis://cache:1/0"):
        raise KeyError("x")


def test_demo_sample_data_is_fixed() -> None:
    lines = demo.customers_csv().splitlines()
    assert lines[0] == "external_id,email,full_name,country,created_at"
    assert len(lines) == 1 + demo.CUSTOMERS + 5
    assert demo.customers_csv() == "\n".join(lines) + "\n"  # same bytes every run
    items = demo.transfers()
    assert len(items) == 38
    assert [t.id for t in items] == [t.id for t in demo.transfers()]  # fixed ids
    assert len({t.id for t in items}) == 38
    accounts = demo.accounts_csv().splitlines()
    assert len(accounts) == 1 + demo.CUSTOMERS + 1


def test_export_help_says_since_is_strictly_later(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["enqueue", "export", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--since ISO only rows whose updated_at (transfers: created_at) is strictly" in shown
    assert "strictly later than this time" in shown
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "strictly later" in readme


def test_export_parts_argument() -> None:
    _, payload = payload_of("export", "--dataset", "customers", "--parts", "4", "--gzip")
    assert (payload["parts"], payload["compress"]) == (4, True)
    assert "parts" not in payload_of("export", "--dataset", "customers")[1]
    assert refusal("export", "--dataset", "customers", "--parts", "17") == (
        "--parts: Input should be less than or equal to 16"
    )
    assert refusal("export", "--dataset", "customers", "--parts", "0") == (
        "--parts: Input should be greater than or equal to 1"
    )
    assert refusal(
        "export", "--dataset", "accounts", "--incremental", "daily", "--parts", "2"
    ).startswith("--parts: cannot be combined with incremental: ")
