"""The test database: the tables tests empty, and the Alembic migrations that build it."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from sqlalchemy.engine import make_url

from alembic import command

ROOT = Path(__file__).resolve().parents[2]
TABLES = (
    "transfers",
    "accounts",
    "customers",
    "import_rejects",
    "import_runs",
    "export_feeds",
)


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """The URL as asyncpg takes it (no +asyncpg driver name)."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(False)


def migrate(url: str, revision: str, *, down: bool = False) -> None:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    if down:
        command.downgrade(config, revision)
    else:
        command.upgrade(config, revision)


def head_revision() -> str:
    """The newest migration's revision id."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini"))).get_current_head()
    assert head is not None
    return head
