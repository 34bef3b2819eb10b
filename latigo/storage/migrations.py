"""alembic, driven from latigo: `latigo db upgrade|downgrade|current` and the start-up schema check."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from alembic import command
from latigo.storage import schema

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def script_location() -> Path:
    """The migration scripts: packaged as latigo/migrations when installed, ./alembic in a checkout."""
    for candidate in (_PACKAGE_DIR / "migrations", _PACKAGE_DIR.parent / "alembic"):
        if (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("latigo's migration scripts are missing from this installation")


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(script_location()))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:
        raise FileNotFoundError("latigo's migration scripts hold no revision")
    return head


def current_revision(engine: Engine) -> str | None:
    return schema.current_revision(engine)


def _run(engine: Engine, action, *args, project: str | None = None) -> None:
    cfg = _alembic_config()
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        if project:
            cfg.attributes["project"] = project
        action(cfg, *args)


def upgrade(engine: Engine, revision: str = "head", project: str | None = None) -> None:
    """Upgrade to `revision`. `project`: the project the rows already in the database belong to (migration
    0005 gives it to every row that predates projects)."""
    _run(engine, command.upgrade, revision, project=project)


def downgrade(engine: Engine, revision: str) -> None:
    _run(engine, command.downgrade, revision)


def ensure_schema_current(engine: Engine) -> None:
    schema.ensure_schema_current(engine)
