"""One-shot operations on tasks for people (the `latigo tasks` and `latigo db prune` commands), each a
lifecycle change plus what the queue needs: a retried task goes back on the queue in the transaction
that requeues it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

import sqlalchemy as sa

from latigo import retention
from latigo.factory import Components
from latigo.lifecycle import TaskFilter
from latigo.scheduler import retention_of
from latigo.storage.tables import TASKS


@dataclass
class TaskRow:
    task_id: str
    project: str
    model: str
    window_start: str
    window_end: str
    state: str
    runs: int
    attempts: int
    lost: int
    rows: int | None
    error: str | None
    finished_at: str | None
    revision: str | None

    def as_dict(self) -> dict:
        return asdict(self)


def retry_tasks(components: Components, which: TaskFilter) -> int:
    """Failed (or other finished) tasks back to queued with fresh counters, and onto the queue."""
    lifecycle, queue = components.lifecycle, components.task_queue
    with lifecycle.transaction() as connection:
        tasks = lifecycle.requeue(connection, which)
        queue.put_many(tasks, connection=connection)
    return len(tasks)


def cancel_tasks(components: Components, which: TaskFilter) -> int:
    """Queued tasks are cancelled (the ledger removes their database queue rows; a broker's message stays,
    and the executor that receives it skips it)."""
    lifecycle = components.lifecycle
    with lifecycle.transaction() as connection:
        ids = lifecycle.cancel(connection, which)
    return len(ids)


def list_tasks(components: Components, which: TaskFilter, limit: int = 100) -> list[TaskRow]:
    table = TASKS
    with components.engine.connect() as connection:
        rows = connection.execute(sa.select(table).where(which.where())
                                  .order_by(table.c.window_start.desc(), table.c.project, table.c.model)
                                  .limit(limit)).all()
    return [TaskRow(r.task_id, r.project, r.model, r.window_start.isoformat(), r.window_end.isoformat(), r.state,
                    r.runs, r.attempts, r.lost, r.rows, r.error, _iso(r.finished_at), r.revision) for r in rows]


def prune(components: Components) -> dict[str, int]:
    return retention.prune(components.prediction_store, retention_of(components.config.retention))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
