"""`etl migrate`: Alembic's upgrade to head, run in-process with the service's database URL."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from alembic import command
from jobs.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(database_url: str) -> Config:
    ini = ROOT / "alembic.ini"
    if not ini.exists():
        raise ConfigError(f"no alembic.ini in {ROOT}: run etl from the project's checkout")
    config = Config(str(ini))
    # alembic/env.py takes the URL from here rather than reading the settings a second time.
    config.attributes["database_url"] = database_url
    return config


def upgrade_to_head(database_url: str) -> str:
    """Upgrade the database to the newest revision and return that revision.

    Runs its own event loop (alembic/env.py calls asyncio.run), so call it outside one.
    """
    config = alembic_config(database_url)
    command.upgrade(config, "head")
    head = ScriptDirectory.from_config(config).get_current_head()
    return head or "base"
