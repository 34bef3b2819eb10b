"""Prediction writes: the bulk upsert path vs a naive one-row-at-a-time ORM insert, same data, same run.

    python benchmarks/storage.py [--rows 200000]
"""

import argparse
import time
from datetime import datetime, timedelta, timezone

from _support import database
from sqlalchemy.orm import Session

from latigo.storage.db import write_transaction
from latigo.storage.predictions import write_predictions
from latigo.storage.tables import Prediction
from latigo.types import PredictionFrame, PredictionRow

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def frames(rows: int, per_frame: int = 5_000) -> list[PredictionFrame]:
    """Task-sized frames: 5,000 rows each (a model with 50 tags over 100 steps)."""
    out = []
    for f in range(rows // per_frame):
        out.append(PredictionFrame(f"model-{f}", [
            PredictionRow("model-output", f"tag-{i % 50}", T0 + timedelta(minutes=10 * (i // 50)), float(i))
            for i in range(per_frame)]))
    return out


def bulk(engine, data) -> float:
    started = time.perf_counter()
    for frame in data:
        with write_transaction(engine) as connection:
            write_predictions(connection, frame)
    return sum(len(f) for f in data) / (time.perf_counter() - started)


def naive(engine, data) -> float:
    started = time.perf_counter()
    for frame in data:
        with Session(engine) as session:
            for row in frame.rows:
                session.add(Prediction(model=frame.model, output=row.output, tag=row.tag, ts=row.ts, value=row.value))
                session.flush()  # one INSERT per row, as a naive implementation does
            session.commit()
    return sum(len(f) for f in data) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    data = frames(args.rows)
    naive_data = frames(max(args.rows // 10, 5_000))
    print(f"prediction rows written per second ({args.rows} rows bulk, {sum(map(len, naive_data))} naive)")
    for kind in ("postgresql", "sqlite"):
        with database(kind) as engine:
            fast = bulk(engine, data)
            rewrite = bulk(engine, data)  # the same rows again: the upsert path of a redelivered task
        with database(kind) as engine:
            slow = naive(engine, naive_data)
        print(f"  {kind:<10} bulk {fast:>10,.0f} rows/s  rewrite {rewrite:>10,.0f} rows/s  "
              f"naive {slow:>8,.0f} rows/s  bulk/naive {fast / slow:5.1f}x")


if __name__ == "__main__":
    main()
