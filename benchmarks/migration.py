"""Migration 0005 (a model is (project, name)) on a filled database: seconds per million ledger rows.

The database is filled at revision 0004 as latigo wrote it then: `tasks` (done rows of `--models` models
over consecutive 30-minute windows), their schedule state and series, and `--values` prediction values;
then `latigo db upgrade`'s code path (`migrations.upgrade(engine, project=...)`) is timed. 0005 rewrites
every task id (the id hashes the project now), adds the project to the keyed tables and rebuilds their
indexes; prediction values keep their key (series id) and are not rewritten, so the time follows the
ledger's size, not the values'.

    python benchmarks/migration.py [--tasks 1000000] [--sqlite-tasks 200000] [--values 2000000]
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from _support import database

from latigo.storage import migrations
from latigo.types import TimeRange, legacy_task_id

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
WINDOW = timedelta(minutes=30)
MODELS = 9_000


def fill_postgresql(engine: sa.Engine, tasks: int, values: int) -> None:
    """Set-based inserts. The ids need only be unique: 0005 recomputes every one from the model and window."""
    windows = max(1, tasks // MODELS)
    with engine.begin() as c:
        c.execute(sa.text(
            "INSERT INTO tasks (task_id, model, window_start, window_end, state, attempts, runs, lost) "
            "SELECT md5(m::text || ':' || w::text), 'model-' || lpad(m::text, 5, '0'), "
            "       :t0 + w * interval '30 minutes', :t0 + (w + 1) * interval '30 minutes', 'done', 1, 1, 0 "
            "FROM generate_series(0, :models - 1) m, generate_series(0, :windows - 1) w"),
            {"t0": T0, "models": MODELS, "windows": windows})
        c.execute(sa.text(
            "INSERT INTO schedule_state (model, last_window_end, updated_at) "
            "SELECT 'model-' || lpad(m::text, 5, '0'), :end, :end FROM generate_series(0, :models - 1) m"),
            {"end": T0 + windows * WINDOW, "models": MODELS})
        c.execute(sa.text(
            "INSERT INTO series (model, output, tag) SELECT 'model-' || lpad(m::text, 5, '0'), 'model-output', "
            "'tag-' || t FROM generate_series(0, :models - 1) m, generate_series(0, 3) t"), {"models": MODELS})
    from latigo.storage.partitions import Partitions

    steps = max(1, values // (MODELS * 4))
    Partitions(engine).ensure(T0, T0 + steps * timedelta(minutes=10) + timedelta(minutes=1))
    with engine.begin() as c:
        c.execute(sa.text(
            "INSERT INTO prediction_values (series_id, ts, value) "
            "SELECT s.id, :t0 + k * interval '10 minutes', k FROM series s, generate_series(0, :steps - 1) k"),
            {"t0": T0, "steps": steps})


def fill_sqlite(engine: sa.Engine, tasks: int) -> None:
    windows = max(1, tasks // MODELS)
    rows = []
    for w in range(windows):
        window = TimeRange(T0 + w * WINDOW, T0 + (w + 1) * WINDOW)
        for m in range(MODELS):
            model = f"model-{m:05d}"
            rows.append({"id": legacy_task_id(model, window), "m": model,
                         "s": window.start.replace(tzinfo=None), "e": window.end.replace(tzinfo=None)})
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO tasks (task_id, model, window_start, window_end, state, attempts, runs, lost) "
                          "VALUES (:id, :m, :s, :e, 'done', 1, 1, 0)"), rows)
        c.execute(sa.text("INSERT INTO schedule_state (model, last_window_end, updated_at) VALUES (:m, :e, :e)"),
                  [{"m": f"model-{m:05d}", "e": rows[-1]["e"]} for m in range(MODELS)])


def count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as c:
        return int(c.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def measure(kind: str, tasks: int, values: int) -> None:
    with database(kind) as engine:
        migrations.downgrade(engine, "0004")
        if kind == "postgresql":
            fill_postgresql(engine, tasks, values)
        else:
            fill_sqlite(engine, tasks)
        ledger = count(engine, "tasks")
        stored = count(engine, "prediction_values")
        started = time.perf_counter()
        migrations.upgrade(engine, project="plant-a")
        seconds = time.perf_counter() - started
        assert count(engine, "tasks") == ledger and count(engine, "prediction_values") == stored
        print(f"  {kind:<10} {ledger:>10,} tasks, {stored:>10,} values: {seconds:7.1f} s "
              f"= {seconds / ledger * 1e6:6.1f} s per million tasks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--sqlite-tasks", type=int, default=200_000)
    parser.add_argument("--values", type=int, default=2_000_000)
    args = parser.parse_args()
    print("migration 0004 -> 0005 on a filled database")
    measure("postgresql", args.tasks, args.values)
    measure("sqlite", args.sqlite_tasks, 0)


if __name__ == "__main__":
    main()
