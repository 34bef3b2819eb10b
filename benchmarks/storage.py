"""Prediction writes: latigo's series + partitioned prediction_values against the text-keyed table latigo
used before (model, output, tag, ts), same data, same run, same database server.

Two frame sizes: a task's (300 rows: 3 buckets x 20 tags x 5 outputs, one INSERT ... SELECT) and a
backfill's (5,000 rows, COPY). Also bytes per stored row (table + indexes, pg_total_relation_size).

    python benchmarks/storage.py [--rows 200000]
"""

import argparse
import io
import time
from datetime import datetime, timedelta, timezone

from _support import database

from latigo.lifecycle import TaskLifecycle
from latigo.storage.db import write_transaction
from latigo.storage.predictions import write_predictions
from latigo.types import PredictionFrame, PredictionRow

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
OUTPUTS = ("model-output", "tag-anomaly-scaled", "anomaly-confidence", "total-anomaly-scaled",
           "total-anomaly-confidence")
TEXT_KEY_DDL = ("CREATE TABLE predictions_text_key (model varchar(255), output varchar(64), tag varchar(255), "
                "ts timestamptz, value double precision, PRIMARY KEY (model, output, tag, ts))")


def frames(rows: int, buckets: int, models: int = 200) -> list[PredictionFrame]:
    """Frames of `buckets` 10-minute buckets x 20 tags x 5 outputs, cycling over `models` models and
    moving forward in time, as consecutive windows do."""
    per_frame = buckets * 20 * len(OUTPUTS)
    out = []
    for f in range(rows // per_frame):
        start = T0 + (f // models) * buckets * timedelta(minutes=10)
        out.append(PredictionFrame(f"model-{f % models:04d}", [
            PredictionRow(output, f"tag-{t:02d}", start + b * timedelta(minutes=10), float(f + b + t))
            for b in range(buckets) for t in range(20) for output in OUTPUTS]))
    return out


def latigo_rate(engine, data) -> float:
    lifecycle = TaskLifecycle(engine)
    lifecycle.predictions.ready_for(PredictionFrame("m", [PredictionRow("o", "t", data[0].rows[0].ts, 0.0),
                                              PredictionRow("o", "t", data[-1].rows[-1].ts, 0.0)]))
    started = time.perf_counter()
    for frame in data:
        with write_transaction(engine) as connection:
            write_predictions(connection, frame)
    return sum(len(f) for f in data) / (time.perf_counter() - started)


def text_key_rate(engine, data) -> float:
    """The previous layout, written the previous way: COPY into a staging table, one INSERT ... ON CONFLICT."""
    with engine.begin() as connection:
        connection.exec_driver_sql(TEXT_KEY_DDL)
    started = time.perf_counter()
    for frame in data:
        with write_transaction(engine) as connection:
            buffer = io.StringIO()
            for row in frame.rows:
                buffer.write(f"{frame.model}\t{row.output}\t{row.tag}\t{row.ts.isoformat()}\t{row.value!r}\n")
            buffer.seek(0)
            cursor = connection.connection.cursor()
            cursor.execute("CREATE TEMPORARY TABLE IF NOT EXISTS staging_text (model text, output text, tag text, "
                           "ts timestamptz, value double precision) ON COMMIT DELETE ROWS")
            cursor.copy_expert("COPY staging_text FROM STDIN", buffer)
            cursor.execute("INSERT INTO predictions_text_key SELECT * FROM staging_text ON CONFLICT "
                           "(model, output, tag, ts) DO UPDATE SET value = EXCLUDED.value")
            cursor.execute("DELETE FROM staging_text")
            cursor.close()
    return sum(len(f) for f in data) / (time.perf_counter() - started)


def bytes_per_row(engine, rows: int) -> tuple[float, float]:
    with engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE")
        new = connection.exec_driver_sql(
            "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
            "WHERE inhparent = 'prediction_values'::regclass").scalar() + connection.exec_driver_sql(
            "SELECT pg_total_relation_size('series')").scalar()
        old = connection.exec_driver_sql("SELECT pg_total_relation_size('predictions_text_key')").scalar()
    return float(new) / rows, float(old) / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    print(f"prediction rows written per second, PostgreSQL, {args.rows:,} rows per layout")
    for label, buckets in (("task frames (300 rows)", 3), ("backfill frames (5,000 rows)", 50)):
        data = frames(args.rows, buckets)
        rows = sum(len(f) for f in data)
        with database("postgresql") as engine:
            new = latigo_rate(engine, data)
            old = text_key_rate(engine, data)
            new_bytes, old_bytes = bytes_per_row(engine, rows)  # before the rewrite leaves dead tuples
            rewrite = latigo_rate(engine, data)  # the same rows again: a redelivered task's upsert
        print(f"  {label:<28} series+partitions {new:>9,.0f} rows/s  text key {old:>9,.0f} rows/s  "
              f"ratio {new / old:4.2f}x  (rewrite {rewrite:,.0f} rows/s)")
        print(f"  {'':<28} bytes per row: {new_bytes:6.1f} vs {old_bytes:6.1f}  ({new_bytes / old_bytes:5.1%})")
    data = frames(args.rows // 4, 3)
    with database("sqlite") as engine:
        rate = latigo_rate(engine, data)
    print(f"  SQLite task frames {rate:,.0f} rows/s")


if __name__ == "__main__":
    main()
