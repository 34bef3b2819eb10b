"""Bulk, idempotent prediction writes.

Rows are keyed by (model, output, tag, ts): a redelivered task rewrites the same
rows instead of adding new ones. PostgreSQL gets COPY into a session-temporary
staging table and one INSERT ... ON CONFLICT; SQLite one executemany upsert.
Never one statement per row on the hot path.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy.engine import Connection

from latigo.storage.tables import Prediction
from latigo.storage.upsert import dialect_insert
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


def write_predictions(connection: Connection, frame: PredictionFrame) -> int:
    """Upsert the frame's rows inside the caller's transaction; returns the row count."""
    if not frame.rows:
        return 0
    # One row per key, the last value winning: ON CONFLICT cannot update a row twice in one statement.
    unique = {(row.output, row.tag, row.ts): row.value for row in frame.rows}
    if connection.dialect.name == "postgresql":
        _copy_merge(connection, frame.model, unique)
    else:
        _executemany_upsert(connection, frame.model, unique)
    return len(unique)


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
    statement = dialect_insert(connection, Prediction.__table__)
    statement = statement.on_conflict_do_update(
        index_elements=["model", "output", "tag", "ts"], set_={"value": statement.excluded.value}
    )
    connection.execute(
        statement, [{"model": model, "output": o, "tag": t, "ts": ts, "value": v} for (o, t, ts), v in rows.items()]
    )
