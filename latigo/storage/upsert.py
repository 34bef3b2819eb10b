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


PAGE = 1000
"""Rows per multi-row INSERT: one round trip each, well under both databases' parameter limits."""


def insert_new(connection: Connection, table: Table, rows: list[dict[str, Any]], key: str,
               conflict: tuple[str, ...] | None = None) -> list[Any]:
    """INSERT ... ON CONFLICT DO NOTHING in pages of multi-row statements; returns the `key` of each row
    that was new (from RETURNING: executemany row counts are not reliable on PostgreSQL). `conflict` names
    the unique columns when they are more than `key`."""
    inserted: list[Any] = []
    for index in range(0, len(rows), PAGE):
        statement = dialect_insert(connection, table).values(rows[index:index + PAGE])
        statement = statement.on_conflict_do_nothing(index_elements=list(conflict or (key,)))
        statement = statement.returning(table.c[key])
        inserted.extend(connection.execute(statement).scalars())
    return inserted
