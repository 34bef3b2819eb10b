"""Predictions at production volume (issue 14): figures measured in one run on throwaway PostgreSQL databases.

The scale latigo exists for is about 9,000 Gordo models every 30 minutes. The shape used here: 9,000 models x
20 tags x 3 outputs = 540,000 series, one value per series per 30-minute window (25.9 M rows a day, near the
issue's ~22 M/day; 10-minute buckets for all 540 k series would be 78 M rows a day, and 50 M rows would not
even fill one daily partition). 50 M rows are then 93 windows, about 1.9 days, in daily partitions; the last
partition is the current, nearly full one. `--rows` scales the model count (and the ledger) down, keeping
the shape (rows per series, days, partitions). Names are Gordo-like (27-character models, 16-character tags),
which matters for the text-keyed layout's size.

1. Load: COPY of (series_id, ts, value) into prediction_values (bulk, not latigo's write path, which took
   30-65 k rows/s here against COPY's 200-300 k: 50 M rows would take 15-30 minutes), series ids from a
   series table made beforehand in SQL, rows sent in time order (each window: every series) as latigo
   writes them in production, so the index ends up as fragmented as a real one.
2. Write rate full vs empty: task frames (300 rows: 60 series x 5 ten-minute buckets) for windows just after
   the loaded range, each one like an executor's finish (ready_for, then write_predictions + `done` in one
   transaction, TaskLifecycle.finish). "Empty" is a second database with the same series and no values;
   the two are measured alternately (ABBA) so that the shared machine's load falls on both alike.
3. `latigo status` with ~1 M tasks in the ledger (done mostly, 1% failed, the newest window partly queued or
   running): collect_status() and the real CLI in a subprocess.
4. Retention: TaskLifecycle.prune dropping the oldest day's partition; for comparison a DELETE of one day's
   rows from a text-keyed table (the sample of 5), extrapolated to a full day.
5. Bytes per stored row: prediction_values partitions + series (pg_total_relation_size) / rows, against the
   text-keyed layout latigo used before, loaded with a sample of the same shape in the same order.
6. Migration 0002 -> head of a database whose text-keyed `predictions` table holds `--migrate-rows` rows.

Every database is created for the run and dropped at the end, also on an error or Ctrl-C.

    python benchmarks/volume.py [--rows 50000000] [--tasks N] [--sample-rows 2000000] [--migrate-rows 2000000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from _support import PG_ADMIN_URL

from latigo.config import DatabaseSettings
from latigo.lifecycle import TaskLifecycle
from latigo.retention import Retention, prune
from latigo.status import collect_status
from latigo.storage import migrations
from latigo.storage.db import create_engine_for
from latigo.storage.partitions import list_partitions
from latigo.storage.predictions import _PG_UNNEST
from latigo.types import PredictionFrame, PredictionRow, Task, TimeRange

FULL_ROWS = 50_000_000
FULL_MODELS = 9_000
FULL_TASKS = 1_000_000
TAGS = 20
OUTPUTS = ("model-output", "tag-anomaly-scaled", "anomaly-confidence")
SERIES_PER_MODEL = TAGS * len(OUTPUTS)
STEP = timedelta(minutes=30)  # one stored value per series per scheduler window
DAY = timedelta(days=1)
FRAME_BUCKETS = 5  # task frames: 60 series x 5 ten-minute buckets = 300 rows
BUCKET = timedelta(minutes=10)
TEXT_KEY_DDL = ("CREATE TABLE predictions_text (model varchar(255), output varchar(64), tag varchar(255), "
                "ts timestamptz, value float8, PRIMARY KEY (model, output, tag, ts))")
ERROR = ("model server answered 503 Service Unavailable after 5 attempts: upstream connect error or "
         "disconnect/reset before headers. reset reason: connection termination")

# The same names in Python (task frames) and in SQL (series, ledger, old table): m = model number, t = tag.
MODEL_SQL = "'plant' || to_char(mod(m, 30), 'FM00') || '-anomaly-model-' || to_char(m, 'FM00000')"
TAG_SQL = "'1' || to_char(mod(m, 30), 'FM000') || '-TT-' || to_char(mod(m * 20 + t, 100000), 'FM00000') || '.PV'"
OUTPUTS_SQL = "unnest(ARRAY['" + "', '".join(OUTPUTS) + "']) WITH ORDINALITY AS o(name, k)"


def model_name(m: int) -> str:
    return f"plant{m % 30:02d}-anomaly-model-{m:05d}"


def tag_name(m: int, t: int) -> str:
    return f"1{m % 30:03d}-TT-{(m * 20 + t) % 100000:05d}.PV"


class Shape:
    """What one run loads: models x 60 series x `stamps` values 30 minutes apart, from t0."""

    def __init__(self, rows: int, now: datetime) -> None:
        self.models = max(10, round(FULL_MODELS * rows / FULL_ROWS))
        self.series = self.models * SERIES_PER_MODEL
        self.stamps = math.ceil(rows / self.series)
        self.rows = self.series * self.stamps
        span = self.stamps * STEP
        # The 50-minute windows written after the loaded range (step 2) must fall in the same, current
        # partition: the range ends by 23:10, yesterday (everything is in the past).
        time_of_day = span % DAY
        if not time_of_day or time_of_day > DAY - timedelta(minutes=50):
            time_of_day = timedelta(hours=22)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        self.end = midnight - DAY + time_of_day  # first instant after the loaded values: yesterday
        self.t0 = self.end - span

    def stamp(self, j: int) -> datetime:
        return self.t0 + j * STEP


# ---------------------------------------------------------------------------------------------- databases


class Databases:
    """Throwaway databases; all of them are dropped by drop_all()."""

    def __init__(self) -> None:
        self.admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        self.names: list[str] = []
        self.engines: list[sa.Engine] = []
        self.tag = uuid.uuid4().hex[:6]

    def create(self, label: str, revision: str = "head") -> tuple[sa.Engine, str]:
        name = f"latigo_bench_volume_{label}_{self.tag}"
        with self.admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        engine = create_engine_for(DatabaseSettings(url=url, pool_size=4))
        self.engines.append(engine)
        migrations.upgrade(engine, revision)
        return engine, url

    def drop_all(self) -> None:
        for engine in self.engines:
            engine.dispose()
        for name in self.names:
            try:
                with self.admin.connect() as c:
                    c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                print(f"dropped database {name}", flush=True)
            except Exception as exc:
                print(f"COULD NOT DROP DATABASE {name} ({exc}): drop it by hand", file=sys.stderr, flush=True)
        self.admin.dispose()

    def data_directory(self) -> str:
        with self.admin.connect() as c:
            return c.exec_driver_sql("SHOW data_directory").scalar_one()


def run(engine: sa.Engine, sql: str, **params: Any) -> Any:
    with engine.begin() as c:
        result = c.execute(sa.text(sql), params)
        return result.all() if result.returns_rows else result.rowcount


def autocommit(engine: sa.Engine, sql: str) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.exec_driver_sql(sql)


@contextlib.contextmanager
def statement_times(engine: sa.Engine) -> Iterator[list[tuple[float, str]]]:
    """The statements run on `engine` meanwhile, with their seconds, slowest first once the block ends."""
    statements: list[tuple[float, str]] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        conn.info["bench_started"] = time.perf_counter()

    def after(conn, cursor, statement, parameters, context, executemany):
        statements.append((time.perf_counter() - conn.info.pop("bench_started"), " ".join(statement.split())))

    sa.event.listen(engine, "before_cursor_execute", before)
    sa.event.listen(engine, "after_cursor_execute", after)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
        sa.event.remove(engine, "after_cursor_execute", after)
        statements.sort(reverse=True)


def timed(label: str, action: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    print(f"  {label} ...", end="", flush=True)
    result = action()
    elapsed = time.perf_counter() - started
    print(f" {elapsed:.1f} s", flush=True)
    return result, elapsed


def make_series(engine: sa.Engine, models: int) -> int:
    """models x 20 tags x 3 outputs, ids in (model, output, tag) order."""
    run(engine, f"INSERT INTO series (project, model, output, tag) SELECT 'default', {MODEL_SQL}, o.name, {TAG_SQL} "
                f"FROM generate_series(0, :last) m, {OUTPUTS_SQL}, generate_series(0, {TAGS - 1}) t "
                "ORDER BY m, o.k, t", last=models - 1)
    autocommit(engine, "VACUUM (ANALYZE) series")
    found = run(engine, "SELECT count(*) FROM series WHERE model = :model AND tag = ANY(:tags)",
                model=model_name(models - 1), tags=[tag_name(models - 1, t) for t in range(TAGS)])[0][0]
    if found != SERIES_PER_MODEL:
        raise RuntimeError(f"SQL and Python series names differ ({found} of {SERIES_PER_MODEL} found)")
    return run(engine, "SELECT count(*) FROM series")[0][0]


# ---------------------------------------------------------------------------------------------- 1. load


def load(engine: sa.Engine, shape: Shape) -> float:
    """COPY every window's rows (all series), one window per transaction; returns seconds."""
    TaskLifecycle(engine).predictions.partitions.ensure(shape.t0, shape.end + DAY)
    ids = [row[0] for row in run(engine, "SELECT id FROM series ORDER BY id")]
    prefixes = [f"{i}\t" for i in ids]
    rng = random.Random(14)
    values = [repr(rng.gauss(0.0, 3.0)) for _ in range(4093)]

    def window(j: int) -> bytes:
        ts = shape.stamp(j).isoformat()
        offset = (j * 7919) % len(values)
        cycle = itertools.cycle(values[offset:] + values[:offset])
        return "".join([f"{p}{ts}\t{v}\n" for p, v in zip(prefixes, cycle, strict=False)]).encode()

    started = time.perf_counter()
    report_every = max(1, shape.stamps // 10)
    with ThreadPoolExecutor(max_workers=1) as pool:  # the next window is formatted while this one is copied
        upcoming = pool.submit(window, 0)
        for j in range(shape.stamps):
            data = upcoming.result()
            if j + 1 < shape.stamps:
                upcoming = pool.submit(window, j + 1)
            with engine.begin() as c:
                cursor = c.connection.cursor()
                cursor.copy_expert("COPY prediction_values (series_id, ts, value) FROM STDIN", io.BytesIO(data),
                                   size=1 << 20)
                cursor.close()
            if (j + 1) % report_every == 0 or j + 1 == shape.stamps:
                elapsed = time.perf_counter() - started
                done = (j + 1) * shape.series
                print(f"    {done:>12,} rows  {elapsed:7.1f} s  {done / elapsed:9,.0f} rows/s", flush=True)
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------- ledger


def fill_ledger(engine: sa.Engine, shape: Shape, tasks: int) -> int:
    """`tasks` ledger rows: every model's windows up to the end of the loaded range, enqueued window by
    window as the scheduler does; the newest window is partly queued (20%) or running (5%), 1% of the
    others failed, 0.1% cancelled. Queue rows for the queued and running ones; schedule state; a few
    dead letters. Returns the ledger's row count."""
    windows = max(1, math.ceil(tasks / shape.models))
    first = shape.end - windows * STEP
    newest = windows - 1
    run(engine, f"""
        INSERT INTO tasks (task_id, project, model, window_start, window_end, state, attempts, runs, lost, error,
                           executor, enqueued_at, started_at, finished_at, duration_ms, rows)
        SELECT md5(name || '|' || w::text), 'default', name, ws, ws + interval '30 minutes', state,
               CASE state WHEN 'failed' THEN 5 ELSE 0 END,
               CASE state WHEN 'failed' THEN 5 WHEN 'queued' THEN 0 WHEN 'cancelled' THEN 0 ELSE 1 END,
               0, CASE state WHEN 'failed' THEN :error WHEN 'cancelled' THEN 'cancelled by hand' END,
               CASE WHEN state IN ('queued', 'cancelled') THEN NULL ELSE 'executor-' || mod(m, 6) END,
               ws + interval '35 minutes',
               CASE WHEN state IN ('queued', 'cancelled') THEN NULL
                    ELSE ws + interval '35 minutes' + mod(m, 300) * interval '1 second' END,
               CASE WHEN state IN ('done', 'failed', 'cancelled')
                    THEN ws + interval '35 minutes' + mod(m, 300) * interval '1 second' + interval '2 seconds' END,
               CASE WHEN state IN ('done', 'failed') THEN 800 + mod(m * 37 + w, 4000) END,
               CASE state WHEN 'done' THEN {SERIES_PER_MODEL * 3} END
        FROM (SELECT m, w, {MODEL_SQL} AS name, :first + w * interval '30 minutes' AS ws,
                     CASE WHEN w = :newest AND mod(m, 5) = 0 THEN 'queued'
                          WHEN w = :newest AND mod(m, 20) = 1 THEN 'running'
                          WHEN mod(m * 7919 + w * 104729, 1000) < 10 THEN 'failed'
                          WHEN mod(m * 7919 + w * 104729, 1000) = 10 THEN 'cancelled'
                          ELSE 'done' END AS state
              FROM generate_series(0, :windows - 1) w, generate_series(0, :models - 1) m) g
        ORDER BY w, m""", error=ERROR, first=first, newest=newest, windows=windows, models=shape.models)
    run(engine, """
        INSERT INTO task_queue (task_id, body, available_at, enqueued_at, deliveries, lease_owner)
        SELECT task_id, json_build_object('schema', 1, 'task_id', task_id, 'model', model,
                                          'start', window_start, 'end', window_end)::text,
               CASE state WHEN 'queued' THEN enqueued_at ELSE started_at + interval '60 seconds' END,
               enqueued_at, CASE state WHEN 'queued' THEN 0 ELSE 1 END,
               CASE state WHEN 'running' THEN executor END
        FROM tasks WHERE state IN ('queued', 'running')""")
    run(engine, f"INSERT INTO schedule_state (project, model, last_window_end, updated_at) "
                f"SELECT 'default', {MODEL_SQL}, :end, :end FROM generate_series(0, :models - 1) m",
        end=shape.end, models=shape.models)
    run(engine, "INSERT INTO dead_letters (source, message_id, body, error, received_at) "
                "SELECT 'eventhub', 'msg-' || i, convert_to('{\"broken\": ' || i, 'UTF8'), "
                "'task body is not JSON: Expecting value', :end - i * interval '1 hour' FROM generate_series(1, 25) i",
        end=shape.end)
    autocommit(engine, "VACUUM (ANALYZE) tasks")
    autocommit(engine, "VACUUM (ANALYZE) task_queue")
    return run(engine, "SELECT count(*) FROM tasks")[0][0]


# ---------------------------------------------------------------------------------------------- 2. writes


def task_frames(shape: Shape, rep: int, reps: int, per_rep: int,
                offset: timedelta = timedelta(0)) -> list[tuple[Task, PredictionFrame]]:
    """One 300-row frame per model for the window just after the loaded range (+ offset); each repetition
    its own models, spread over all of them."""
    window = TimeRange(shape.end + offset, shape.end + offset + FRAME_BUCKETS * BUCKET)
    stride = max(1, shape.models // (per_rep * reps))
    out = []
    for i in range(per_rep):
        m = ((i * reps + rep) * stride) % shape.models
        rows = [PredictionRow(output, tag_name(m, t), window.start + b * BUCKET, math.sin(m + t + b) * 3.0)
                for b in range(FRAME_BUCKETS) for output in OUTPUTS for t in range(TAGS)]
        out.append((Task(model_name(m), window), PredictionFrame(model_name(m), rows)))
    return out


def prepare_tasks(engine: sa.Engine, frames: list[tuple[Task, PredictionFrame]]) -> None:
    """The frames' tasks in the ledger, running, as an executor would have them before finishing."""
    lifecycle = TaskLifecycle(engine)
    with lifecycle.transaction() as c:
        lifecycle.enqueue(c, [task for task, _ in frames])
        c.execute(sa.text("UPDATE tasks SET state = 'running', runs = 1 WHERE task_id = ANY(:ids)"),
                  {"ids": [task.task_id for task, _ in frames]})


def write_rate(engine: sa.Engine, frames: list[tuple[Task, PredictionFrame]]) -> float:
    """Rows per second through latigo's executor path, one transaction per task."""
    lifecycle = TaskLifecycle(engine)
    lifecycle.predictions.ready_for(frames[0][1])  # a partition created now would be a one-off: not timed
    started = time.perf_counter()
    rows = 0
    for task, frame in frames:
        lifecycle.predictions.ready_for(frame)
        with lifecycle.transaction() as connection:
            rows += lifecycle.finish(connection, task, frame, 50)
    return rows / (time.perf_counter() - started)


def explain_frames(engine: sa.Engine, frames: list[tuple[Task, PredictionFrame]]) -> str:
    """Where a frame's statement spends: EXPLAIN (ANALYZE, BUFFERS, WAL) of write_predictions' statement for
    frames of models not written yet, each rolled back; returns the sums per frame."""
    totals = dict.fromkeys(("ms", "hit", "read", "dirtied", "written", "records", "fpi", "bytes"), 0.0)
    for _, frame in frames:
        unique = {(row.output, row.tag, row.ts): row.value for row in frame.rows}
        params = {"model": frame.model, "outputs": [k[0] for k in unique], "tags": [k[1] for k in unique],
                  "stamps": [k[2].isoformat() for k in unique], "values": list(unique.values())}
        with engine.connect() as c:
            transaction = c.begin()
            cursor = c.connection.cursor()
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) " + _PG_UNNEST, params)
            plan = cursor.fetchone()[0][0]
            transaction.rollback()
        top = plan["Plan"]
        for key, name in (("hit", "Shared Hit Blocks"), ("read", "Shared Read Blocks"),
                          ("dirtied", "Shared Dirtied Blocks"), ("written", "Shared Written Blocks"),
                          ("records", "WAL Records"), ("fpi", "WAL FPI"), ("bytes", "WAL Bytes")):
            totals[key] += top[name]
        totals["ms"] += plan["Execution Time"]
    per = {key: value / len(frames) for key, value in totals.items()}
    return (f"{per['ms']:.2f} ms; buffers hit {per['hit']:.0f}, read {per['read']:.0f}, dirtied {per['dirtied']:.0f}, "
            f"written {per['written']:.0f}; WAL {per['records']:.0f} records, {per['fpi']:.0f} full-page images, "
            f"{per['bytes'] / 1024:.0f} kB")


# ---------------------------------------------------------------------------------------------- 3. status


def time_status(engine_url: str, repeat: int = 3) -> list[float]:
    """collect_status() on a fresh engine (connecting included), `repeat` times."""
    engine = create_engine_for(DatabaseSettings(url=engine_url, pool_size=1))
    times = []
    try:
        for _ in range(repeat):
            started = time.perf_counter()
            collect_status(engine)
            times.append(time.perf_counter() - started)
    finally:
        engine.dispose()
    return times


def time_cli_status(url: str, repeat: int = 3) -> tuple[list[float], list[float], str]:
    """`latigo --config FILE status` in a subprocess; also, for scale, a Python that only loads the config and
    imports what the status command imports (no database)."""
    latigo = shutil.which("latigo")
    command = [latigo] if latigo else [sys.executable, "-m", "latigo"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATIGO_")}
    with tempfile.TemporaryDirectory() as directory:
        config = os.path.join(directory, "latigo.yaml")
        with open(config, "w") as f:
            f.write(f"database:\n  url: {url}\n")
        status, startup, output = [], [], ""
        for _ in range(repeat):
            started = time.perf_counter()
            done = subprocess.run([*command, "--config", config, "status"], cwd=directory, env=env,
                                  capture_output=True, text=True, timeout=600)
            status.append(time.perf_counter() - started)
            if done.returncode != 0:
                raise RuntimeError(f"latigo status failed ({done.returncode}): {done.stderr[-2000:]}")
            output = done.stdout
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", IMPORTS_ONLY, config], cwd=directory, env=env, check=True,
                           timeout=600)
            startup.append(time.perf_counter() - started)
    return status, startup, output


IMPORTS_ONLY = ("import sys; from latigo.config import load_config; load_config(sys.argv[1]); "
                "import latigo.cli, latigo.status, latigo.storage.db, latigo.storage.migrations")


# ---------------------------------------------------------------------------------------------- 5. bytes


def new_layout_bytes(engine: sa.Engine) -> int:
    return int(run(engine, "SELECT (SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits "
                       "WHERE inhparent = 'prediction_values'::regclass) + pg_total_relation_size('series')")[0][0])


def text_key_sample(engine: sa.Engine, shape: Shape, sample_rows: int) -> int:
    """The first series' values (whole series, every window) into the text-keyed table, in time order."""
    first_series = max(1, min(shape.series, math.ceil(sample_rows / shape.stamps)))
    run(engine, TEXT_KEY_DDL)
    run(engine, "INSERT INTO predictions_text SELECT s.model, s.output, s.tag, v.ts, v.value "
                "FROM prediction_values v JOIN series s ON s.id = v.series_id WHERE v.series_id <= :last "
                "ORDER BY v.ts, v.series_id", last=first_series)
    return run(engine, "SELECT count(*) FROM predictions_text")[0][0]


# ---------------------------------------------------------------------------------------------- 6. migration


def migration(databases: Databases, shape: Shape, rows: int) -> tuple[int, float, list[tuple[float, str]]]:
    """A database at 0002 whose `predictions` table holds `rows` rows of the run's shape (whole models,
    every window, written in time order), upgraded to head. Returns (rows, seconds, slowest statements)."""
    engine, _ = databases.create("migrate", revision="0002")
    models = max(1, math.ceil(rows / (SERIES_PER_MODEL * shape.stamps)))
    run(engine, f"INSERT INTO predictions (model, output, tag, ts, value) "
                f"SELECT {MODEL_SQL}, o.name, {TAG_SQL}, :t0 + j * interval '30 minutes', sin(m + t + j) * 3 "
                f"FROM generate_series(0, :stamps - 1) j, generate_series(0, :models - 1) m, {OUTPUTS_SQL}, "
                f"generate_series(0, {TAGS - 1}) t ORDER BY j, m, o.k, t",
        t0=shape.t0, stamps=shape.stamps, models=models)
    autocommit(engine, "VACUUM (ANALYZE) predictions")
    stored = run(engine, "SELECT count(*) FROM predictions")[0][0]
    with statement_times(engine) as statements:
        started = time.perf_counter()
        migrations.upgrade(engine)
        elapsed = time.perf_counter() - started
    moved = run(engine, "SELECT count(*) FROM prediction_values")[0][0]
    if moved != stored:
        raise RuntimeError(f"the migration kept {moved} of {stored} rows")
    return stored, elapsed, statements[:3]


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=FULL_ROWS, help="prediction rows to load (default 50 M)")
    parser.add_argument("--tasks", type=int, default=None,
                        help="ledger rows (default 1 M scaled like --rows: 1 M at 50 M rows)")
    parser.add_argument("--sample-rows", type=int, default=2_000_000, help="rows of the text-keyed sample")
    parser.add_argument("--migrate-rows", type=int, default=2_000_000, help="rows in the migrated database")
    parser.add_argument("--frames", type=int, default=1000, help="task frames per repetition and database")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the full/empty write measurement")
    args = parser.parse_args()
    shape = Shape(args.rows, datetime.now(timezone.utc))
    tasks = args.tasks if args.tasks is not None else max(1000, round(FULL_TASKS * args.rows / FULL_ROWS))
    per_rep = max(1, min(args.frames, shape.models // args.reps))

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    databases = Databases()
    need = shape.rows * 120 + (args.sample_rows + args.migrate_rows) * 400
    free = shutil.disk_usage(databases.data_directory()).free
    if free - need < 20 * 10**9:
        raise SystemExit(f"about {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free: 20 GB must stay free")
    print(f"{shape.rows:,} rows: {shape.models:,} models x {SERIES_PER_MODEL} series = {shape.series:,} series, "
          f"{shape.stamps} values each, 30 minutes apart, {shape.t0:%Y-%m-%d %H:%M} to {shape.end:%Y-%m-%d %H:%M} "
          f"UTC ({shape.stamps * STEP / DAY:.2f} days); disk free {free / 1e9:.0f} GB, ~{need / 1e9:.1f} GB needed",
          flush=True)
    begun = time.perf_counter()
    figures: list[str] = []
    try:
        measure(databases, shape, args, tasks, per_rep, figures)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        databases.drop_all()
        print(f"\nfigures ({shape.rows:,} rows, {time.perf_counter() - begun:.0f} s in all):")
        for line in figures:
            print(f"  {line}")


def measure(databases: Databases, shape: Shape, args: argparse.Namespace, tasks: int, per_rep: int,
            figures: list[str]) -> None:
    """Appends each figure to `figures` as soon as it is measured."""
    print("\n1. load (COPY into prediction_values, series from a series table made in SQL)", flush=True)
    full, full_url = databases.create("full")
    timed(f"series table ({shape.series:,} series)", lambda: make_series(full, shape.models))
    seconds = load(full, shape)
    rate = shape.rows / seconds
    print(f"  loaded {shape.rows:,} rows in {seconds:.1f} s: {rate:,.0f} rows/s", flush=True)
    figures.append(f"load: {rate:,.0f} rows/s ({shape.rows:,} rows by COPY in {seconds:.0f} s; no goal)")

    print("\n5. bytes per stored row", flush=True)
    # Both measured before any VACUUM of either (neither has free-space or visibility maps yet).
    new_bytes = new_layout_bytes(full)
    sample, _ = timed("text-keyed sample", lambda: text_key_sample(full, shape, args.sample_rows))
    old_bytes = run(full, "SELECT pg_total_relation_size('predictions_text')")[0][0]
    new_per_row, old_per_row = new_bytes / shape.rows, old_bytes / sample
    print(f"  series + partitions: {new_bytes / 1e9:.2f} GB for {shape.rows:,} rows; "
          f"text key: {old_bytes / 1e6:.0f} MB for {sample:,} rows", flush=True)
    figures.append(f"bytes per row: {new_per_row:.1f} vs {old_per_row:.1f} text-keyed = "
                   f"{new_per_row / old_per_row:.1%} (goal <= 50%)")

    print("\n3. ledger and status", flush=True)
    ledger, _ = timed(f"ledger ({tasks:,} tasks wanted)", lambda: fill_ledger(full, shape, tasks))
    unanalyzed = time_status(full_url, repeat=1)
    print(f"  status before the partitions were ever analyzed (exact count of every row): {unanalyzed[0]:.2f} s")
    autovacuum = run(full, "SHOW autovacuum")[0][0]
    figures.append(f"(collect_status before the partitions were first analyzed, counting every row: "
                   f"{unanalyzed[0]:.2f} s; autovacuum is {autovacuum} on this server)")
    timed("VACUUM (ANALYZE) of the loaded partitions", lambda: autocommit(full, "VACUUM (ANALYZE) prediction_values"))
    api = time_status(full_url)
    cli, startup, output = time_cli_status(full_url)
    summary = " | ".join(line.strip() for line in output.splitlines()[:3])
    print(f"  {ledger:,} tasks; status says: {summary}")
    print(f"  collect_status: {', '.join(f'{t:.3f}' for t in api)} s;  latigo status (CLI): "
          f"{', '.join(f'{t:.2f}' for t in cli)} s;  its imports alone: {', '.join(f'{t:.2f}' for t in startup)} s")
    figures.append(f"collect_status with {ledger:,} tasks and {shape.rows:,} rows: {statistics.median(api):.3f} s "
                   f"(median of {len(api)}; goal < 1 s)")
    figures.append(f"latigo --config FILE status (subprocess): {statistics.median(cli):.2f} s "
                   f"(median of {len(cli)}; config + imports alone {statistics.median(startup):.2f} s; goal < 1 s)")

    print(f"\n2. write rate, task frames ({SERIES_PER_MODEL} series x {FRAME_BUCKETS} buckets), "
          f"{per_rep} frames per repetition and database", flush=True)
    empty, _ = databases.create("empty")
    timed("series table of the empty database", lambda: make_series(empty, shape.models))
    batches = [task_frames(shape, rep, args.reps, per_rep) for rep in range(args.reps)]
    for engine in (full, empty):
        prepare_tasks(engine, [pair for batch in batches for pair in batch])
    rates: dict[str, list[float]] = {"full": [], "empty": []}
    for rep, batch in enumerate(batches):
        order = [("empty", empty), ("full", full)] if rep % 2 == 0 else [("full", full), ("empty", empty)]
        for label, engine in order:
            rates[label].append(write_rate(engine, batch))
        print(f"  repetition {rep + 1}: full {rates['full'][-1]:,.0f} rows/s, empty {rates['empty'][-1]:,.0f} rows/s "
              f"({rates['full'][-1] / rates['empty'][-1]:.2f})", flush=True)
    full_rate, empty_rate = statistics.median(rates["full"]), statistics.median(rates["empty"])
    paired = [f / e for f, e in zip(rates["full"], rates["empty"], strict=True)]
    # Keys not written yet: the first repetition's models, 5 minutes later (still in the same partition).
    probe = task_frames(shape, 0, args.reps, min(per_rep, 50), offset=timedelta(minutes=5))
    for label, engine in (("full", full), ("empty", empty)):
        print(f"  per frame, {label:<5} (EXPLAIN ANALYZE of the INSERT, {len(probe)} frames, rolled back): "
              f"{explain_frames(engine, probe)}", flush=True)
    figures.append(f"write rate full/empty: {statistics.median(paired):.2f} (goal >= 0.8; median of {args.reps} "
                   f"paired repetitions: {', '.join(f'{r:.2f}' for r in paired)}; full {full_rate:,.0f} rows/s, "
                   f"empty {empty_rate:,.0f} rows/s, medians of {args.reps} x {per_rep * 300:,} rows)")

    print("\n4. dropping a day's partition", flush=True)
    with full.begin() as c:
        partitions = list_partitions(c)
    oldest = partitions[0]
    oldest_rows = sum(1 for j in range(shape.stamps) if shape.stamp(j) < oldest.span.end) * shape.series
    now = datetime.now(timezone.utc)
    retention = Retention(predictions=now - oldest.span.end, tasks=None, dead_letters=None, schedule_state=None)
    lifecycle = TaskLifecycle(full)
    with statement_times(full) as statements:
        deleted, drop_seconds = timed(f"retention.prune of {oldest.name} ({oldest_rows:,} rows)",
                                      lambda: prune(lifecycle.predictions, retention, now=now))
    for took, statement in statements[:2]:
        print(f"    {took:6.2f} s  {statement[:150]}")
    if deleted["predictions"] != 1:
        raise RuntimeError(f"prune dropped {deleted['predictions']} partitions, not 1")
    figures.append(f"dropping a day's partition (TaskLifecycle.prune, {oldest_rows:,} rows): {drop_seconds:.2f} s "
                   "(goal < 1 s)")
    day_rows, delete_seconds = timed(
        "DELETE of the same day from the text-keyed sample",
        lambda: run(full, "DELETE FROM predictions_text WHERE ts < :end", end=oldest.span.end))
    if day_rows:
        scaled = delete_seconds * oldest_rows / day_rows
        figures.append(f"for comparison, DELETE of that day from the text-keyed sample: {delete_seconds:.2f} s for "
                       f"{day_rows:,} rows, ~{scaled:.1f} s for the day's {oldest_rows:,} rows (linear; then VACUUM)")

    print("\n6. migration 0002 -> head", flush=True)
    (migrated, seconds, slowest), _ = timed(f"database at 0002 with ~{args.migrate_rows:,} rows, then upgrade",
                                            lambda: migration(databases, shape, args.migrate_rows))
    for took, statement in slowest:
        print(f"    {took:6.1f} s  {statement[:150]}")
    figures.append(f"migration to head: {seconds / (migrated / 1e6):.1f} s per million rows ({migrated:,} rows in "
                   f"{seconds:.1f} s; no goal)")


if __name__ == "__main__":
    main()
