"""Retention: how long finished history is kept, and pruning what is older.

Pruning is not a change of any task's state: it deletes history that is final (finished tasks, dead letters,
the schedule state of models gone, the overview rows of models whose every task went) in the ledger's tables,
and has the prediction store drop predictions past their own retention. It runs as the scheduler's chore and
as `latigo db prune`, in batches (no long lock, no huge transaction), each batch its own transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from latigo.lifecycle import FINAL
from latigo.storage.db import write_transaction
from latigo.storage.prediction_store import PredictionStore
from latigo.storage.tables import DEAD_LETTERS, MODEL_SUMMARY, SCHEDULE_STATE, TASKS

_tasks, _letters, _schedule = TASKS, DEAD_LETTERS, SCHEDULE_STATE


@dataclass(frozen=True)
class Retention:
    """How long finished rows are kept; None keeps them forever."""

    predictions: timedelta | None = timedelta(days=400)
    tasks: timedelta | None = timedelta(days=30)
    dead_letters: timedelta | None = timedelta(days=30)
    schedule_state: timedelta | None = timedelta(days=30)


def prune(store: PredictionStore, retention: Retention, batch_size: int = 5000,
          now: datetime | None = None) -> dict[str, int]:
    """Delete what is older than its retention; returns rows deleted per table (partitions dropped, for
    the predictions on PostgreSQL)."""
    now = now or datetime.now(timezone.utc)
    engine = store.engine
    deleted = {"predictions": 0, "tasks": 0, "dead_letters": 0, "schedule_state": 0, "model_summary": 0}
    if retention.predictions is not None:
        deleted["predictions"] = store.prune(now - retention.predictions, batch_size)
    if retention.tasks is not None:
        deleted["tasks"] = _prune(engine, _tasks, _tasks.c.task_id, sa.and_(
            _tasks.c.state.in_(tuple(FINAL)), _tasks.c.finished_at < now - retention.tasks), batch_size)
        if deleted["tasks"]:
            deleted["model_summary"] = _prune_summary(engine)
    if retention.dead_letters is not None:
        deleted["dead_letters"] = _prune(
            engine, _letters, _letters.c.id, _letters.c.received_at < now - retention.dead_letters, batch_size)
    if retention.schedule_state is not None:
        deleted["schedule_state"] = _prune_schedule(engine, now - retention.schedule_state, batch_size)
    return deleted


def _prune_summary(engine: Engine) -> int:
    """The overview's rows of models whose every task was pruned (gone from the ledger, gone from the
    overview, as before the summary): one probe of the tasks index per model."""
    summary = MODEL_SUMMARY
    with write_transaction(engine) as connection:
        return _rowcount(connection.execute(sa.delete(summary).where(~sa.exists().where(
            _tasks.c.project == summary.c.project, _tasks.c.model == summary.c.model))))


def _prune_schedule(engine: Engine, cutoff: datetime, batch_size: int) -> int:
    """Schedule state of models gone (not scheduled since `cutoff`), keyed by (project, model)."""
    total = 0
    while True:
        with write_transaction(engine) as connection:
            key = sa.tuple_(_schedule.c.project, _schedule.c.model)
            stale = sa.select(_schedule.c.project, _schedule.c.model).where(_schedule.c.updated_at < cutoff)
            count = _rowcount(connection.execute(sa.delete(_schedule).where(key.in_(stale.limit(batch_size)))))
        total += count
        if count < batch_size:
            return total


def _prune(engine: Engine, table: sa.Table, key: sa.Column, condition: Any, batch_size: int) -> int:
    total = 0
    while True:
        with write_transaction(engine) as connection:
            batch = sa.select(key).where(condition).limit(batch_size).scalar_subquery()
            count = _rowcount(connection.execute(sa.delete(table).where(key.in_(batch))))
        total += count
        if count < batch_size:
            return total


def _rowcount(result: Any) -> int:
    count = result.rowcount
    return max(count, 0) if count is not None else 0
