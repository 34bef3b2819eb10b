"""Which schema revision this latigo needs, and whether a database has it — without loading alembic, so
that a short command (`latigo status`) starts in a fraction of a second. alembic itself runs only when the
schema is changed (`latigo db upgrade`, latigo.storage.migrations); a test keeps SCHEMA_REVISION equal to
the newest migration."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from latigo.errors import SchemaOutdatedError

SCHEMA_REVISION = "0009"
"""The newest migration in alembic/versions: the schema this code reads and writes."""


def current_revision(engine: Engine) -> str | None:
    """The revision alembic recorded in the database, or None for an empty one."""
    with engine.connect() as connection:
        if not sa.inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def ensure_schema_current(engine: Engine) -> None:
    """Refuse to run against a schema older (or newer) than this code expects."""
    current = current_revision(engine)
    if current != SCHEMA_REVISION:
        found = current or "empty (no latigo tables)"
        raise SchemaOutdatedError(
            f"database schema is {found}, this latigo needs {SCHEMA_REVISION}: run `latigo db upgrade` first"
        )
