"""Bulk, idempotent prediction writes.

Rows are keyed by (model, output, tag, ts): a redelivered task rewrites the same
rows instead of adding new ones. PostgreSQL gets COPY into a session-temporary
staging table and one INSERT ... ON CONFLICT; SQLite one executemany upsert.
Never one statement per row on the hot path.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from sqlalchemy.engine import Connection

from latigo.storage.tables import Prediction
from latigo.storage.upsert import dialect_insert
from latigo.types import PredictionFrame, PredictionRow

_STAGING_DDL = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS prediction_staging "
    "(model text, output text, tag text, ts timestamptz, value double precision) ON COMMIT DELETE ROWS"
)
_MERGE = (
    "INSERT INTO predictions (model, output, tag, ts, value) "
    "SELECT DISTINCT ON (model, output, tag, ts) model, output, tag, ts, value FROM prediction_staging "
    "ON CONFLICT (model, output, tag, ts) DO UPDATE SET value = EXCLUDED.value"
)


def write_predictions(connection: Connection, frame: PredictionFrame) -> int:
    """Upsert the frame's rows inside the caller's transaction; returns the row count."""
    if not frame.rows:
        return 0
    if connection.dialect.name == "postgresql":
        _copy_merge(connection, frame.model, frame.rows)
    else:
        _executemany_upsert(connection, frame.model, frame.rows)
    return len(frame.rows)


def _copy_merge(connection: Connection, model: str, rows: Sequence[PredictionRow]) -> None:
    buffer = io.StringIO()
    model_field = _copy_text(model)
    for row in rows:
        buffer.write(f"{model_field}\t{_copy_text(row.output)}\t{_copy_text(row.tag)}\t"
                     f"{row.ts.isoformat()}\t{_copy_float(row.value)}\n")
    buffer.seek(0)
    cursor = connection.connection.cursor()
    try:
        cursor.execute(_STAGING_DDL)
        cursor.copy_expert("COPY prediction_staging (model, output, tag, ts, value) FROM STDIN", buffer)
        cursor.execute(_MERGE)
        cursor.execute("TRUNCATE prediction_staging")
    finally:
        cursor.close()


def _copy_text(value: str) -> str:
    """Escape for COPY's text format: backslash, tab, newline and carriage return are special."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _copy_float(value: float) -> str:
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(float(value))


def _executemany_upsert(connection: Connection, model: str, rows: Sequence[PredictionRow]) -> None:
    statement = dialect_insert(connection, Prediction.__table__)
    statement = statement.on_conflict_do_update(
        index_elements=["model", "output", "tag", "ts"], set_={"value": statement.excluded.value}
    )
    # The last value of a duplicated key wins, as with PostgreSQL's DISTINCT ON path.
    unique = {(row.output, row.tag, row.ts): row.value for row in rows}
    connection.execute(
        statement,
        [{"model": model, "output": o, "tag": t, "ts": ts, "value": v} for (o, t, ts), v in unique.items()],
    )
