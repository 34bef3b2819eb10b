"""The operator's reads, each statement written once: what `latigo status`, `latigo web` and `latigo
anomalies` ask of the ledger (tasks), the queue, model_summary, schedule_state and the stored predictions.

Why one place: these statements were tuned for 9,000 models on PostgreSQL with stale planner statistics (a
skip scan instead of a DISTINCT, index probes instead of scans, LATERAL where SQLite has none); a copy in
each caller drifts, and a fix made to one copy is missing from the others. The callers keep what they show
(text, HTML, their dataclasses); these functions return rows. Every read is bounded: by LIMIT, by a time
range, or by an index prefix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from latigo.storage import task_hours
from latigo.storage.db import utc_from_db
from latigo.storage.tables import (
    DEAD_LETTERS,
    MODEL_SUMMARY,
    PREDICTION_VALUES_TABLE,
    SCHEDULE_STATE,
    TASK_QUEUE,
    TASKS,
    UtcDateTime,
)
from latigo.types import ModelRef

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
"""The states tasks.state holds (latigo.lifecycle, which changes them, stands above storage)."""
CHUNK = 500
"""Models or series per IN list."""

_tasks = TASKS.c


# ---------------------------------------------------------------------------------------------- the skip scan

def _after_known(indent: int) -> str:
    """The probe of the walk: the next (project, model) of the index after the one the walk stands on."""
    return ("FROM tasks t WHERE (t.project, t.model) > (known.project, known.model)\n"
            f"{' ' * indent}ORDER BY t.project, t.model LIMIT 1")


_FIRST = "SELECT project, model FROM tasks ORDER BY project, model LIMIT 1"
_KNOWN_ONLY = "WHERE known.model IS NOT NULL"


def _models_in_ledger(lateral: bool) -> str:
    """Every (project, model) in the ledger, walked along the tasks(project, model, window_end) index one
    probe each (a skip scan): milliseconds for thousands of models, whatever the size of the ledger. With
    `lateral` (PostgreSQL) one probe per model; without (SQLite has no LATERAL) two, and the walk ends on a
    row of NULLs."""
    if lateral:
        first = f"({_FIRST})"
        step = f"""SELECT next.project, next.model FROM known CROSS JOIN LATERAL (
        SELECT t.project, t.model {_after_known(8)}) AS next"""
    else:
        first = f"SELECT * FROM ({_FIRST}) AS first"
        step = f"""SELECT (SELECT t.project {_after_known(12)}),
           (SELECT t.model {_after_known(12)})
    FROM known {_KNOWN_ONLY}"""
    return f"""
WITH RECURSIVE known(project, model) AS (
    {first}
    UNION ALL
    {step}
)"""


_OF_KNOWN = "FROM tasks t WHERE t.project = known.project AND t.model = known.model"
_DONE_END = f"(SELECT t.window_end {_OF_KNOWN}\n        AND t.state = 'done' ORDER BY t.window_end DESC LIMIT 1)"


def _newest(indent: int) -> str:
    """The probe of a known model's newest task."""
    return f"{_OF_KNOWN}\n{' ' * indent}ORDER BY t.window_end DESC LIMIT 1"



_LAST_DONE = sa.text(_models_in_ledger(lateral=False) + f"""
SELECT known.project, known.model,
       {_DONE_END} AS window_end
FROM known {_KNOWN_ONLY}
""")
_MODEL_LEDGER = sa.text(_models_in_ledger(lateral=True) + f"""
SELECT known.project, known.model,
       {_DONE_END} AS done_end,
       newest.state, newest.window_end
FROM known LEFT JOIN LATERAL (
    SELECT t.state, t.window_end {_newest(4)}) AS newest ON true
{_KNOWN_ONLY}
""")
_MODEL_LEDGER_SQLITE = sa.text(_models_in_ledger(lateral=False) + f"""
SELECT known.project, known.model,
       {_DONE_END},
       (SELECT t.state {_newest(8)}),
       (SELECT t.window_end {_newest(8)})
FROM known {_KNOWN_ONLY}""")

LedgerRow = tuple[str, str, Any, str | None, Any]
"""(project, model, newest done window's end, newest task's state, newest task's window end)."""


def model_ledger(connection: Connection) -> list[LedgerRow]:
    """Per (project, model): its newest done window's end, its newest task's state and window end (each one
    probe of the tasks(project, model, window_end) index, after the skip scan)."""
    statement = _MODEL_LEDGER_SQLITE if connection.dialect.name == "sqlite" else _MODEL_LEDGER
    return [(row[0], row[1], row[2], row[3], row[4]) for row in connection.execute(statement).all()]


def last_done_windows(connection: Connection) -> list[tuple[str, str, Any]]:
    """Per (project, model), the end of its newest done window, read backwards from the skip scan's probe."""
    return [(project, model, end) for project, model, end in connection.execute(_LAST_DONE).all()
            if end is not None]


# ---------------------------------------------------------------------------------------------- the ledger

EXACT_LEDGER_BELOW = 500_000
"""Above this many ledger rows (PostgreSQL's statistics), `done` is estimated: the other states are few
and counted through the (state, finished_at) index, done is the rest. Counting millions of done tasks on
every call is what would make status slow as the ledger grows (30 days at 9,000 models is 13 M rows)."""


def count_in_state(connection: Connection, state: str) -> int:
    """Tasks in one state: a range of the tasks(state, finished_at) index."""
    return int(connection.execute(sa.select(sa.func.count()).select_from(TASKS)
                                  .where(_tasks.state == state)).scalar_one() or 0)


def state_counts(connection: Connection) -> dict[str, int]:
    """Tasks per ledger state, counted."""
    rows = connection.execute(sa.select(_tasks.state, sa.func.count()).group_by(_tasks.state)).all()
    return {state: count for state, count in rows}


def ledger_counts(connection: Connection) -> tuple[dict[str, int], bool]:
    """(tasks per state, whether `done` is an estimate)."""
    if connection.dialect.name == "postgresql":
        total = connection.execute(sa.text(
            "SELECT greatest(reltuples, 0) FROM pg_class WHERE oid = CAST('tasks' AS regclass)")).scalar_one()
        if total >= EXACT_LEDGER_BELOW:
            others = {state: count_in_state(connection, state) for state in (QUEUED, RUNNING, FAILED, CANCELLED)}
            counts = {state: count for state, count in others.items() if count}
            counts[DONE] = max(int(total) - sum(others.values()), 0)
            return counts, True
    return state_counts(connection), False


def task_counts(engine: Engine) -> dict[str, int]:
    """Tasks per ledger state."""
    with engine.connect() as connection:
        return state_counts(connection)


def oldest_queued(connection: Connection) -> datetime | None:
    """When the longest-waiting queued task was enqueued."""
    return utc_from_db(connection.execute(
        sa.select(sa.func.min(_tasks.enqueued_at)).where(_tasks.state == QUEUED)).scalar())


def _finished(state: str, since: datetime) -> Any:
    """Tasks of a final state finished since `since`: a range of the tasks(state, finished_at) index."""
    return sa.and_(_tasks.state == state, _tasks.finished_at >= since)


def finished_count(connection: Connection, state: str, since: datetime) -> int:
    """Tasks of a final state finished since `since`."""
    return int(connection.execute(sa.select(sa.func.count()).select_from(TASKS)
                                  .where(_finished(state, since))).scalar_one() or 0)


def newest_failures(connection: Connection, limit: int, projects: Sequence[str] = (),
                    models: Sequence[str] = ()) -> Sequence[Row[Any]]:
    """The failed tasks (whole ledger rows) of `projects` and `models` (by name or project/name), newest
    first."""
    of_projects = _tasks.project.in_(projects) if projects else sa.true()
    of_models = sa.or_(_tasks.model.in_(models), (_tasks.project + "/" + _tasks.model).in_(models)) \
        if models else sa.true()
    return connection.execute(sa.select(TASKS).where(_tasks.state == FAILED, of_projects, of_models)
                              .order_by(_tasks.finished_at.desc()).limit(limit)).all()


def failures_since(connection: Connection, since: datetime, limit: int) -> Sequence[Row[Any]]:
    """(project, model, window_start, error, finished_at, runs, attempts) of the tasks failed since `since`,
    newest first."""
    return connection.execute(
        sa.select(_tasks.project, _tasks.model, _tasks.window_start, _tasks.error, _tasks.finished_at, _tasks.runs,
                  _tasks.attempts)
        .where(_finished(FAILED, since)).order_by(_tasks.finished_at.desc()).limit(limit)).all()


def _reason_expression(connection: Connection) -> Any:
    """The text before the first ':' of tasks.error (the whole error when it has none)."""
    error = sa.func.coalesce(_tasks.error, "")
    if connection.dialect.name == "postgresql":
        return sa.func.split_part(error, ":", 1)
    colon = sa.func.instr(error, ":")
    return sa.case((colon > 0, sa.func.substr(error, 1, colon - 1)), else_=error)


def failure_heads(connection: Connection, since: datetime) -> Sequence[Row[Any]]:
    """(reason, n, last) per text before the first ':' of the errors of the tasks failed since `since`, the
    most frequent first (50 at most)."""
    reason = _reason_expression(connection).label("reason")
    return connection.execute(
        sa.select(reason, sa.func.count().label("n"), sa.func.max(_tasks.finished_at).label("last"))
        .where(_finished(FAILED, since)).group_by(reason).order_by(sa.desc("n")).limit(50)).all()


def newest_failed_with(connection: Connection, since: datetime, prefix: str | None,
                       limit: int) -> Sequence[Row[Any]]:
    """(project, model, window_start, error) of the newest tasks failed since `since` whose error starts
    with `prefix` (None: any error)."""
    condition = _finished(FAILED, since)
    if prefix is not None:
        condition = sa.and_(condition, sa.func.substr(_tasks.error, 1, len(prefix)) == prefix)
    return connection.execute(
        sa.select(_tasks.project, _tasks.model, _tasks.window_start, _tasks.error).where(condition)
        .order_by(_tasks.finished_at.desc()).limit(limit)).all()


def executors_finished(connection: Connection, since: datetime) -> Sequence[Row[Any]]:
    """(executor, tasks done or failed, last finished_at) since `since`."""
    return connection.execute(
        sa.select(_tasks.executor, sa.func.count(), sa.func.max(_tasks.finished_at))
        .where(_tasks.state.in_((DONE, FAILED)), _tasks.finished_at >= since, _tasks.executor.is_not(None))
        .group_by(_tasks.executor).limit(1000)).all()


def executors_running(connection: Connection, since: datetime) -> Sequence[Row[Any]]:
    """(executor, tasks running, last started_at) of the tasks started since `since`."""
    return connection.execute(
        sa.select(_tasks.executor, sa.func.count(), sa.func.max(_tasks.started_at))
        .where(_tasks.state == RUNNING, _tasks.started_at >= since, _tasks.executor.is_not(None))
        .group_by(_tasks.executor).limit(1000)).all()


def _of(ref: ModelRef) -> Any:
    """The model's tasks: a prefix of the tasks(project, model, window_end) index."""
    return sa.and_(_tasks.project == ref.project, _tasks.model == ref.name)


def newest_task(connection: Connection, ref: ModelRef) -> Row[Any] | None:
    """(state, window_end) of the model's newest task: one probe of tasks(project, model, window_end)."""
    return connection.execute(
        sa.select(_tasks.state, _tasks.window_end).where(_of(ref))
        .order_by(_tasks.window_end.desc()).limit(1)).first()


def last_done_end(connection: Connection, ref: ModelRef) -> Any:
    """The end of the model's newest done window (as the database gives it): one backward probe."""
    return connection.execute(
        sa.select(_tasks.window_end).where(_of(ref), _tasks.state == DONE)
        .order_by(_tasks.window_end.desc()).limit(1)).scalar()


def model_tasks(connection: Connection, ref: ModelRef, limit: int) -> Sequence[Row[Any]]:
    """The model's newest tasks: (window_start, window_end, state, runs, attempts, lost, executor,
    finished_at, duration_ms, rows, error, revision)."""
    return connection.execute(
        sa.select(_tasks.window_start, _tasks.window_end, _tasks.state, _tasks.runs, _tasks.attempts,
                  _tasks.lost, _tasks.executor, _tasks.finished_at, _tasks.duration_ms, _tasks.rows,
                  _tasks.error, _tasks.revision)
        .where(_of(ref)).order_by(_tasks.window_end.desc()).limit(limit)).all()


# ---------------------------------------------------------------------------------------------- queue, letters

def queue_sizes(connection: Connection, now: datetime) -> tuple[int, int]:
    """(messages in the database queue, those claimable at `now`)."""
    size = connection.execute(sa.select(sa.func.count()).select_from(TASK_QUEUE)).scalar_one()
    available = connection.execute(
        sa.select(sa.func.count()).select_from(TASK_QUEUE)
        .where(TASK_QUEUE.c.available_at <= sa.literal(now, TASK_QUEUE.c.available_at.type))).scalar_one()
    return size, available


def dead_letter_count(connection: Connection, cap: int | None = None) -> int:
    """Dead letters, counted up to `cap` (None: all of them)."""
    if cap is None:
        return connection.execute(sa.select(sa.func.count()).select_from(DEAD_LETTERS)).scalar_one()
    capped = sa.select(DEAD_LETTERS.c.id).limit(cap).subquery()
    return int(connection.execute(sa.select(sa.func.count()).select_from(capped)).scalar_one() or 0)


# ---------------------------------------------------------------------------------------------- per model

def model_summaries(connection: Connection, project: str = "") -> Iterable[Row[Any]]:
    """Every row of model_summary (of `project`): one scan, kept by the triggers on tasks (alembic 0008)."""
    statement = sa.select(MODEL_SUMMARY)
    if project:
        statement = statement.where(MODEL_SUMMARY.c.project == project)
    return connection.execute(statement)


def schedule_ends(connection: Connection, refs: Sequence[ModelRef] | None = None) -> Iterator[tuple[str, str, Any]]:
    """(project, model, last window enqueued's end) of every model scheduled (or of `refs`, CHUNK a read)."""
    schedule = SCHEDULE_STATE.c
    columns = sa.select(schedule.project, schedule.model, schedule.last_window_end)
    if refs is None:
        yield from ((p, m, end) for p, m, end in connection.execute(columns))
        return
    for chunk in chunks(list(refs)):
        keys = [tuple(ref) for ref in chunk]
        yield from ((p, m, end) for p, m, end in connection.execute(
            columns.where(sa.tuple_(schedule.project, schedule.model).in_(keys))))


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for index in range(0, len(items), size):
        yield items[index:index + size]


# ---------------------------------------------------------------------------------------------- predictions

EXACT_COUNT_BELOW = 1_000_000
"""Below this many rows (by PostgreSQL's statistics) status counts them exactly; above, it reports the
statistics: counting tens of millions of rows on every call is what made status slow."""


def prediction_rows(connection: Connection) -> tuple[int, bool]:
    """(stored prediction rows, whether that is PostgreSQL's estimate rather than a count)."""
    if connection.dialect.name == "postgresql":
        # A partition never analysed yet (reltuples -1) is sized from its file: about 56 bytes a row.
        estimate = connection.execute(sa.text(
            "SELECT coalesce(sum(CASE WHEN c.reltuples >= 0 THEN c.reltuples "
            "ELSE pg_relation_size(c.oid) / 56.0 END), 0) FROM pg_class c JOIN pg_inherits i "
            "ON c.oid = i.inhrelid WHERE i.inhparent = CAST('prediction_values' AS regclass)")).scalar_one()
        if estimate >= EXACT_COUNT_BELOW:
            return int(estimate), True
    return connection.execute(sa.select(sa.func.count()).select_from(PREDICTION_VALUES_TABLE)).scalar_one(), False


_series_table = sa.table("series", sa.column("id"), sa.column("project"), sa.column("model"), sa.column("output"),
                         sa.column("tag"))
_values_table = sa.table("prediction_values", sa.column("series_id"), sa.column("ts"), sa.column("value"))
"""Untyped: SQLite's text timestamps are parsed by utc_from_db, several times faster than the column type's
processing; bounds are bound as the column type stores them."""


def series_of(connection: Connection, models: Sequence[ModelRef], output: str) -> dict[int, tuple[ModelRef, str]]:
    """{series id: (model, tag)} of one output group, along the series(project, model, output, tag) index."""
    found: dict[int, tuple[ModelRef, str]] = {}
    series = _series_table
    for chunk in chunks(list(models)):
        for sid, project, model, tag in connection.execute(
                sa.select(series.c.id, series.c.project, series.c.model, series.c.tag)
                .where(sa.tuple_(series.c.project, series.c.model).in_([tuple(ref) for ref in chunk]),
                       series.c.output == output)):
            found[sid] = (ModelRef(project, model), tag)
    return found


def _latest_value(column: Any, since: Any) -> Any:
    return (sa.select(column).where(_values_table.c.series_id == _series_table.c.id, _values_table.c.ts >= since)
            .order_by(_values_table.c.ts.desc()).limit(1).scalar_subquery())


def latest_values(connection: Connection, refs: Sequence[ModelRef], output: str,
                  since: datetime) -> Iterator[tuple[str, str, Any, Any]]:
    """(project, model, ts, value): per series of `output` of these models, its newest value since `since`
    (one probe of the key each)."""
    bound = sa.bindparam("since", since, type_=UtcDateTime)
    s = _series_table
    statement = sa.select(s.c.project, s.c.model, s.c.id, _latest_value(_values_table.c.ts, bound).label("ts"),
                          _latest_value(_values_table.c.value, bound).label("value")).where(
        sa.tuple_(s.c.project, s.c.model).in_([tuple(ref) for ref in refs]), s.c.output == output)
    return ((p, m, ts, v) for p, m, _sid, ts, v in connection.execute(statement))


def bucketed_values(connection: Connection, series_ids: Sequence[int], since: datetime, until: datetime,
                    bucket: timedelta) -> dict[int, list[tuple[datetime, float]]]:
    """Per series, the maximum of each `bucket` between since and until (at the bucket's last timestamp),
    oldest first, read along prediction_values' key (series_id, ts)."""
    values = _values_table
    seconds = max(int(bucket.total_seconds()), 1)
    key = task_hours.bucket(connection, values.c.ts, seconds)
    low, high = sa.bindparam("since", since, type_=UtcDateTime), sa.bindparam("until", until, type_=UtcDateTime)
    out: dict[int, list[tuple[datetime, float]]] = {}
    for chunk in chunks(list(series_ids)):
        statement = (sa.select(values.c.series_id, sa.func.max(values.c.ts).label("ts"),
                               sa.func.max(values.c.value).label("value"))
                     .where(values.c.series_id.in_(chunk), values.c.ts >= low, values.c.ts < high)
                     .group_by(values.c.series_id, key))
        for sid, ts, value in connection.execute(statement):
            stamp = utc_from_db(ts)
            if stamp is not None:
                out.setdefault(sid, []).append((stamp, float(value)))
    for points in out.values():
        points.sort()
    return out


def first_value_at(connection: Connection, series_ids: Sequence[int], since: datetime) -> datetime | None:
    """The oldest timestamp since `since` of these series (the first CHUNK of them)."""
    if not series_ids:
        return None
    values = _values_table
    return utc_from_db(connection.execute(sa.select(sa.func.min(values.c.ts)).where(
        values.c.series_id.in_(list(series_ids)[:CHUNK]),
        values.c.ts >= sa.bindparam("since", since, type_=UtcDateTime))).scalar())


# ---------------------------------------------------------------------------------------------- anomalies

_SERIES = sa.text("SELECT id, project, model FROM series WHERE output = :output AND tag = :output")
_VALUES = sa.text("SELECT ts, value FROM prediction_values WHERE series_id = :series AND ts >= :since ORDER BY ts")
_TAG_PEAKS = sa.text(
    "SELECT s.tag, max(v.value) FROM series s JOIN prediction_values v ON v.series_id = s.id "
    "WHERE s.project = :project AND s.model = :model AND s.output = :output AND v.ts >= :start AND v.ts <= :end "
    "GROUP BY s.tag ORDER BY max(v.value) DESC LIMIT :limit")
_EDGES = sa.text("""
WITH above AS (
    SELECT p.series_id, p.ts, p.value FROM prediction_values p
    WHERE p.series_id IN (SELECT id FROM series WHERE output = :output AND tag = :output) AND p.ts >= :since
    AND p.value > :threshold)
SELECT a.series_id, a.ts, a.value, extract(epoch FROM a.ts - b.ts) AS gap, b.value AS previous,
       n.ts IS NULL AS newest, n.ts AS next_ts, n.value AS next_value
FROM above a
LEFT JOIN LATERAL (SELECT q.ts, q.value FROM prediction_values q WHERE q.series_id = a.series_id
                   AND q.ts < a.ts AND q.ts >= :since ORDER BY q.ts DESC LIMIT 1) AS b ON true
LEFT JOIN LATERAL (SELECT q.ts, q.value FROM prediction_values q WHERE q.series_id = a.series_id
                   AND q.ts > a.ts ORDER BY q.ts LIMIT 1) AS n ON true
ORDER BY a.series_id, a.ts
""")
"""PostgreSQL: the buckets above the threshold (one filtered scan of the totals) and, by two probes of the
key each, the bucket before and after: a day at 9,000 models is 1.3 M buckets, of which Python sees the
few around an episode."""
_STAMPS = sa.text("SELECT series_id, ts FROM prediction_values WHERE series_id IN :ids AND ts >= :since "
                  "ORDER BY series_id, ts")
_ROOMY = ("SET LOCAL work_mem = '64MB'", "SET LOCAL jit = off")
"""One sort of a day's totals in memory, not on disk; no JIT compiling for a statement that runs once."""


def whole_series(connection: Connection, output: str) -> list[tuple[int, str, str]]:
    """(id, project, model) of every series whose output and tag are both `output` (a model's total)."""
    return [(sid, project, model) for sid, project, model in connection.execute(_SERIES, {"output": output}).all()]


def series_values(connection: Connection, series_id: int, since: datetime) -> list[tuple[datetime, float]]:
    """(ts, value) of one series from `since` on, oldest first."""
    values = _VALUES.bindparams(sa.bindparam("since", type_=UtcDateTime)).columns(ts=UtcDateTime(), value=sa.Double())
    return [(ts, value) for ts, value in connection.execute(values, {"series": series_id, "since": since}).all()]


def tag_peaks(connection: Connection, ref: ModelRef, output: str, start: datetime, end: datetime,
              limit: int) -> list[tuple[str, float]]:
    """(tag, its highest value of `output` between start and end), highest first."""
    peaks = _TAG_PEAKS.bindparams(sa.bindparam("start", type_=UtcDateTime), sa.bindparam("end", type_=UtcDateTime))
    return [(tag, float(value)) for tag, value in connection.execute(
        peaks, {"project": ref.project, "model": ref.name, "output": output, "start": start, "end": end,
                "limit": limit}).all()]


def edges_above(connection: Connection, output: str, since: datetime, threshold: float) -> Sequence[Row[Any]]:
    """PostgreSQL: (series_id, ts, value, gap seconds, previous value, newest, next_ts, next_value) of each
    bucket of the `output` series above `threshold` since `since` (_EDGES), in a roomy transaction."""
    with _transaction(connection):
        for setting in _ROOMY:
            connection.exec_driver_sql(setting)
        edges = _EDGES.bindparams(sa.bindparam("since", type_=UtcDateTime)).columns(
            ts=UtcDateTime(), next_ts=UtcDateTime())
        return connection.execute(edges, {"output": output, "since": since, "threshold": threshold}).all()


@contextlib.contextmanager
def _transaction(connection: Connection) -> Iterator[None]:
    """The caller's transaction when one is open (SET LOCAL lasts until it ends), else one of our own."""
    if connection.in_transaction():
        yield
    else:
        with connection.begin():
            yield


def series_stamps(connection: Connection, ids: Sequence[int], since: datetime) -> dict[int, list[datetime]]:
    """Per series of `ids`, its timestamps from `since` on, oldest first."""
    statement = _STAMPS.bindparams(sa.bindparam("ids", expanding=True), sa.bindparam("since", type_=UtcDateTime))
    stamps: dict[int, list[datetime]] = {}
    for series_id, ts in connection.execute(statement, {"ids": list(ids), "since": since}):
        stamps.setdefault(series_id, []).append(ts)
    return stamps
