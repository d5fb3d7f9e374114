"""`etl` as a new user meets it: whose file system a file argument means, psql's command line."""

from __future__ import annotations

import pytest

from worker.cli import build_parser
from worker.cli.payloads import payload_from_args
from worker.cli.psql import psql_command

SECRET = "s3cr3t-p@ss"


def parse(*argv: str) -> dict[str, object]:
    return vars(build_parser().parse_args(argv))


def test_import_names_a_file_in_the_workers_import_directory() -> None:
    args = build_parser().parse_args(
        ["enqueue", "import", "--dataset", "customers", "--path", "c.csv"]
    )
    spec, payload = payload_from_args(args)
    assert (spec.name, payload.model_dump()["path"]) == ("import_file", "c.csv")
    # --file, its old name, still works for one release (the command says it is deprecated).
    old = build_parser().parse_args(
        ["enqueue", "import", "--dataset", "customers", "--file", "c.csv"]
    )
    assert (old.path, old.legacy_path) == (None, "c.csv")
    assert payload_from_args(old)[1].model_dump()["path"] == "c.csv"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "customers"], "one of the arguments --path is required"),
        (
            ["--dataset", "customers", "--path", "a.csv", "--file", "b.csv"],
            "argument --file: not allowed with argument --path",
        ),
    ],
)
def test_import_needs_one_path(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["enqueue", "import", *argv])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def help_of(*argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_says_whose_file_system_each_file_is_on(capsys: pytest.CaptureFixture[str]) -> None:
    shown = help_of("enqueue", "import", capsys=capsys)
    assert "--path NAME a file in the worker's import directory (ETL_IMPORT_DIR)" in shown
    assert "--file" not in shown  # deprecated: not advertised
    for job in ("upsert", "transfer"):
        shown = help_of("enqueue", job, capsys=capsys)
        assert "--from-file" in shown and "--file" in shown
        assert "a local JSON Lines file read by this command" in shown


def test_local_files_under_either_name() -> None:
    for flag in ("--from-file", "--file"):
        assert parse("enqueue", "upsert", "--dataset", "customers", flag, "r.jsonl")["file"] == (
            "r.jsonl"
        )
        assert parse("enqueue", "transfer", flag, "t.jsonl")["file"] == "t.jsonl"


def test_replace_failed_is_an_enqueue_option() -> None:
    assert parse("enqueue", "ping", "--job-id", "x", "--replace-failed")["replace_failed"] is True
    assert parse("enqueue", "ping")["replace_failed"] is False


def test_db_takes_psqls_arguments_after_a_double_dash() -> None:
    assert parse("db", "--", "-At", "-c", "select 1")["psql_args"] == [
        "--",
        "-At",
        "-c",
        "select 1",
    ]
    assert parse("psql")["psql_args"] == []


def test_psql_gets_the_password_in_its_environment_only() -> None:
    argv, env = psql_command(
        f"postgresql+asyncpg://etl:{SECRET.replace('@', '%40')}@db.internal:6432/etl_prod",
        ["--", "-c", "select 1"],
    )
    assert argv == [
        "psql",
        "--host", "db.internal",
        "--port", "6432",
        "--username", "etl",
        "--dbname", "etl_prod",
        "-c", "select 1",
    ]  # fmt: skip
    assert not any(SECRET in arg or "s3cr3t" in arg for arg in argv)
    assert env == {"PGAPPNAME": "etl db", "PGPASSWORD": SECRET}


def test_psql_on_the_embedded_servers_unix_socket() -> None:
    argv, env = psql_command("postgresql+asyncpg://postgres@/postgres?host=/srv/etl/.etl/pg", [])
    assert argv == [
        "psql",
        "--host",
        "/srv/etl/.etl/pg",
        "--username",
        "postgres",
        "--dbname",
        "postgres",
    ]
    assert "PGPASSWORD" not in env


@pytest.mark.parametrize(
    ("query", "mode"),
    [("ssl=require", "require"), ("ssl=true", "require"), ("sslmode=verify-full", "verify-full")],
)
def test_psql_keeps_the_urls_tls_mode(query: str, mode: str) -> None:
    _, env = psql_command(f"postgresql+asyncpg://etl@db/etl?{query}", [])
    assert env["PGSSLMODE"] == mode
