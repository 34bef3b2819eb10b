"""INSERT ... ON CONFLICT for both dialects (their insert() constructs share the API)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection


def dialect_insert(connection: Connection, table: Table) -> Any:
    """The dialect's own insert(), which offers on_conflict_do_update / on_conflict_do_nothing."""
    module = postgresql if connection.dialect.name == "postgresql" else sqlite
    return module.insert(table)
