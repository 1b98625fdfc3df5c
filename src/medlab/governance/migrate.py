"""The hub database's schema history (Alembic): :func:`upgrade` brings any database — a new
SQLite file, an empty PostgreSQL database, or one at an older revision — to the latest."""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

HISTORY = Path(__file__).with_name("migrations")
_GUARD = threading.Lock()


def config() -> Config:
    """The Alembic configuration of the hub's history (no ini file)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HISTORY))
    return cfg


def head() -> str:
    """The latest revision."""
    found = ScriptDirectory.from_config(config()).get_current_head()
    assert found is not None
    return found


def current(engine: Engine) -> str | None:
    """The revision ``engine``'s database is at (None: never migrated)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate ``engine``'s database to ``revision`` (in one transaction where the backend
    allows DDL in transactions: SQLite and PostgreSQL do)."""
    if revision == "head" and current(engine) == head():
        return
    with _GUARD, engine.begin() as connection:
        cfg = config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)
