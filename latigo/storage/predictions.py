"""Bulk, idempotent prediction writes.

Rows are keyed by (model, output, tag, ts): a redelivered task rewrites the same
rows instead of adding new ones. On PostgreSQL a task's few hundred rows go in one
multi-row INSERT ... ON CONFLICT (one round trip); large frames go through COPY into
a session-temporary staging table and one INSERT ... SELECT ON CONFLICT. SQLite gets
one executemany upsert. Never one statement per row on the hot path.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from datetime import datetime

import sqlalchemy as sa
from psycopg2.extras import execute_values
from sqlalchemy.engine import Connection

from latigo.storage.tables import UtcDateTime
from latigo.types import PredictionFrame

Key = tuple[str, str, datetime]  # (output, tag, ts) within one model

_STAGING_DDL = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS prediction_staging "
    "(model text, output text, tag text, ts timestamptz, value double precision) ON COMMIT DELETE ROWS"
)
_MERGE = (
    "INSERT INTO predictions (model, output, tag, ts, value) "
    "SELECT model, output, tag, ts, value FROM prediction_staging "
    "ON CONFLICT (model, output, tag, ts) DO UPDATE SET value = EXCLUDED.value"
)


COPY_FROM_ROWS = 2000
"""Frames at least this large are written with COPY (faster per row, but three statements more)."""
_UPSERT_VALUES = (
    "INSERT INTO predictions (model, output, tag, ts, value) VALUES %s "
    "ON CONFLICT (model, output, tag, ts) DO UPDATE SET value = EXCLUDED.value"
)
_SQLITE_UPSERT = sa.text(
    "INSERT INTO predictions (model, output, tag, ts, value) VALUES (:model, :output, :tag, :ts, :value) "
    "ON CONFLICT (model, output, tag, ts) DO UPDATE SET value = excluded.value"
).bindparams(sa.bindparam("ts", type_=UtcDateTime))


def write_predictions(connection: Connection, frame: PredictionFrame) -> int:
    """Upsert the frame's rows inside the caller's transaction; returns the row count."""
    if not frame.rows:
        return 0
    # One row per key, the last value winning: ON CONFLICT cannot update a row twice in one statement.
    unique = {(row.output, row.tag, row.ts): row.value for row in frame.rows}
    if connection.dialect.name != "postgresql":
        _executemany_upsert(connection, frame.model, unique)
    elif len(unique) >= COPY_FROM_ROWS:
        _copy_merge(connection, frame.model, unique)
    else:
        _values_upsert(connection, frame.model, unique)
    return len(unique)


def _values_upsert(connection: Connection, model: str, rows: Mapping[Key, float]) -> None:
    cursor = connection.connection.cursor()
    try:
        execute_values(cursor, _UPSERT_VALUES, [(model, o, t, ts, v) for (o, t, ts), v in rows.items()],
                       page_size=COPY_FROM_ROWS)
    finally:
        cursor.close()


def _copy_merge(connection: Connection, model: str, rows: Mapping[Key, float]) -> None:
    buffer = io.StringIO()
    model_field = _copy_text(model)
    escaped: dict[str, str] = {}  # outputs and tags repeat across rows: escape each once
    for (output, tag, ts), value in rows.items():
        out_field = escaped.get(output) or escaped.setdefault(output, _copy_text(output))
        tag_field = escaped.get(tag) or escaped.setdefault(tag, _copy_text(tag))
        buffer.write(f"{model_field}\t{out_field}\t{tag_field}\t{ts.isoformat()}\t{_copy_float(value)}\n")
    buffer.seek(0)
    cursor = connection.connection.cursor()
    try:
        cursor.execute(_STAGING_DDL)
        cursor.copy_expert("COPY prediction_staging (model, output, tag, ts, value) FROM STDIN", buffer)
        cursor.execute(_MERGE)
        # ON COMMIT DELETE ROWS empties the staging table; a second write in the same transaction must not
        # merge the first one's rows again.
        cursor.execute("DELETE FROM prediction_staging")
    finally:
        cursor.close()


def _copy_text(value: str) -> str:
    """Escape for COPY's text format: backslash, tab, newline and carriage return are special."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _copy_float(value: float) -> str:
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(float(value))


def _executemany_upsert(connection: Connection, model: str, rows: Mapping[Key, float]) -> None:
    connection.execute(
        _SQLITE_UPSERT,
        [{"model": model, "output": o, "tag": t, "ts": ts, "value": v} for (o, t, ts), v in rows.items()],
    )
