"""The operator's reads, each statement written once: what `latigo status`, `latigo web` and `latigo
anomalies` ask of the ledger (tasks), the queue, model_summary, schedule_state and the stored predictions.

Why one place: these statements were tuned for 9,000 models on PostgreSQL with stale planner statistics (a
skip scan instead of a DISTINCT, index probes instead of scans, LATERAL where SQLite has none); a copy in
each caller drifts, and a fix made to one copy is missing from the others. The callers keep what they show
(text, HTML, their dataclasses); these functions return rows. Every read is bounded: by LIMIT, by a time
range, or by an index prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from latigo.storage.db import utc_from_db
from latigo.storage.tables import (
    DEAD_LETTERS,
    TASK_QUEUE,
    TASKS,
    PredictionValue,
    TaskRecord,
)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
"""The states tasks.state holds (latigo.lifecycle, which changes them, stands above storage)."""

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
    return int(connection.execute(sa.select(sa.func.count()).select_from(TaskRecord)
                                  .where(TaskRecord.state == state)).scalar_one() or 0)


def state_counts(connection: Connection) -> dict[str, int]:
    """Tasks per ledger state, counted."""
    rows = connection.execute(sa.select(TaskRecord.state, sa.func.count()).group_by(TaskRecord.state)).all()
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
        sa.select(sa.func.min(TaskRecord.enqueued_at)).where(TaskRecord.state == QUEUED)).scalar())


def newest_failures(connection: Connection, limit: int, projects: Sequence[str] = (),
                    models: Sequence[str] = ()) -> Sequence[Row[Any]]:
    """The failed tasks (whole ledger rows) of `projects` and `models` (by name or project/name), newest
    first."""
    of_projects = TaskRecord.project.in_(projects) if projects else sa.true()
    of_models = sa.or_(TaskRecord.model.in_(models), (TaskRecord.project + "/" + TaskRecord.model).in_(models)) \
        if models else sa.true()
    return connection.execute(sa.select(TaskRecord).where(TaskRecord.state == FAILED, of_projects, of_models)
                              .order_by(TaskRecord.finished_at.desc()).limit(limit)).all()


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
    return connection.execute(sa.select(sa.func.count()).select_from(PredictionValue)).scalar_one(), False
