"""The one owner of task state: every change of a task's state in the ledger.

The scheduler, the executor, the queues and the CLI call these; none of them writes the ledger itself.
Every change takes the caller's connection, so it joins the caller's transaction: the database queue
claims and starts a task in one transaction, and the executor writes the predictions, marks the task
done and removes the queue row in another — two transactions per task. The hot-path statements, and
the database queue's, are written out whole in latigo.storage.ledger_statements; the rows themselves
are the prediction store's (latigo.storage.prediction_store), which `finish` hands the `done` mark to,
and pruning past retention is latigo.retention's.

States: queued → running → done | failed, back to queued on a retry or a release, cancelled by hand.
`attempts` counts runs where the model ran and failed in a way worth retrying (capped by
executor.max_attempts); `lost` counts runs that never finished because their executor died (capped by
executor.max_lost_runs, so a task that kills its executor cannot loop forever). A release on shutdown
or after an infrastructure fault counts in neither.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from latigo.errors import describe_exception, one_line
from latigo.storage import ledger_statements as sql
from latigo.storage.db import write_transaction
from latigo.storage.prediction_store import PredictionStore
from latigo.storage.predictions import FollowUp
from latigo.storage.tables import (
    DEAD_LETTERS,
    SCHEDULE_STATE,
    TASKS,
)
from latigo.storage.upsert import dialect_insert, insert_new
from latigo.types import ModelRef, PredictionFrame, Started, Task, TimeRange

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
FINAL = frozenset({DONE, FAILED, CANCELLED})
MAX_NAME_LENGTH = 255
"""The longest model name the ledger holds (tasks.model)."""

_tasks = TASKS
_letters = DEAD_LETTERS
_schedule = SCHEDULE_STATE

def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class TaskFilter:
    """Which tasks a recovery command acts on."""

    states: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    window: TimeRange | None = None
    task_ids: tuple[str, ...] = ()
    projects: tuple[str, ...] = ()

    def where(self) -> Any:
        clauses: list[sa.ColumnElement[bool]] = []
        if self.task_ids:
            clauses.append(_tasks.c.task_id.in_(self.task_ids))
        if self.states:
            clauses.append(_tasks.c.state.in_(self.states))
        if self.projects:
            clauses.append(_tasks.c.project.in_(self.projects))
        if self.models:
            clauses.append(_tasks.c.model.in_(self.models))
        if self.window is not None:
            clauses.append(_tasks.c.window_start >= self.window.start)
            clauses.append(_tasks.c.window_end <= self.window.end)
        return sa.and_(sa.true(), *clauses)


class LedgerUnit:
    """One ledger transaction and the steps that follow its commit. A step that fails is logged, never
    raised: the ledger already says what happened, and a message not settled is delivered again (and
    skipped, or run again)."""

    def __init__(self) -> None:
        self.connection: Any = None
        self._after: list[Callable[[], None]] = []

    def after_commit(self, step: Callable[[], None]) -> None:
        self._after.append(step)

    def committed(self) -> None:
        for step in self._after:
            try:
                step()
            except Exception as exc:
                log.warning("settling the message failed (%s); it will be redelivered", describe_exception(exc))


class TaskLifecycle:
    """Task state changes; see the module docstring."""

    def __init__(self, engine: Engine, predictions: PredictionStore | None = None) -> None:
        self.engine = engine
        self.predictions = predictions or PredictionStore(engine)
        """Where finish writes a task's rows (with its `done` mark)."""

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with write_transaction(self.engine) as connection:
            yield connection

    @contextmanager
    def unit_of_work(self) -> Iterator[LedgerUnit]:
        """A transaction whose after-commit steps (a broker message's settlement) run once it committed."""
        unit = LedgerUnit()
        with self.transaction() as connection:
            unit.connection = connection
            yield unit
        unit.committed()

    # ------------------------------------------------------------------ scheduling

    def enqueue(self, connection: Connection, tasks: Sequence[Task]) -> Enqueued:
        """Ledger rows for new task ids; a task already known keeps its state (a done task stays done).
        Returns the new count and the tasks to put on the queue: the new ones and those still queued
        (putting a queued task again is harmless; a done, failed or running one is left alone)."""
        if not tasks:
            return Enqueued(0, [])
        rows = [_new_row(task, QUEUED, utcnow()) for task in tasks]
        new = set(insert_new(connection, _tasks, rows, "task_id"))
        others = [task.task_id for task in tasks if task.task_id not in new]
        queued = self._in_state(connection, others, QUEUED) if others else set()
        return Enqueued(len(new), [task for task in tasks if task.task_id in new or task.task_id in queued])

    def _in_state(self, connection: Connection, task_ids: Sequence[str], state: str) -> set[str]:
        found: set[str] = set()
        for index in range(0, len(task_ids), 1000):
            chunk = list(task_ids[index:index + 1000])
            found.update(connection.execute(sa.select(_tasks.c.task_id).where(
                _tasks.c.task_id.in_(chunk), _tasks.c.state == state)).scalars())
        return found

    def advance_schedule(self, connection: Connection, tasks: Iterable[Task]) -> None:
        """Move each model's last scheduled window end forward (never back)."""
        newest: dict[ModelRef, datetime] = {}
        for task in tasks:
            newest[task.ref] = max(newest.get(task.ref, task.window.end), task.window.end)
        if not newest:
            return
        statement = dialect_insert(connection, _schedule)
        greatest = sa.func.max if connection.dialect.name == "sqlite" else sa.func.greatest
        statement = statement.on_conflict_do_update(
            index_elements=["project", "model"],
            set_={"last_window_end": greatest(_schedule.c.last_window_end, statement.excluded.last_window_end),
                  "updated_at": statement.excluded.updated_at},
        )
        now = utcnow()
        rows = [{"project": ref.project, "model": ref.name, "last_window_end": end, "updated_at": now}
                for ref, end in newest.items()]
        connection.execute(statement, rows)

    def requeue(self, connection: Connection, which: TaskFilter) -> list[Task]:
        """Back to queued with fresh counters (a retry by hand, or a re-run of done windows); returns
        the tasks, for the caller to put on the queue."""
        rows = connection.execute(
            sa.update(_tasks).where(which.where(), _tasks.c.state != RUNNING)
            .values(state=QUEUED, attempts=0, lost=0, error=None, finished_at=None, enqueued_at=utcnow())
            .returning(_tasks.c.project, _tasks.c.model, _tasks.c.window_start, _tasks.c.window_end)
        ).all()
        return [Task(model, TimeRange(start, end), project) for project, model, start, end in rows]

    def cancel(self, connection: Connection, which: TaskFilter) -> list[str]:
        """Queued tasks become cancelled, and their rows in the database queue that no executor holds go
        with them (a broker's message stays, and the executor that receives it skips it); returns their ids."""
        ids = list(connection.execute(
            sa.update(_tasks).where(which.where(), _tasks.c.state == QUEUED)
            .values(state=CANCELLED, finished_at=utcnow(), error="cancelled by hand")
            .returning(_tasks.c.task_id)
        ).scalars())
        sql.remove_unclaimed(connection, ids)
        return ids

    # ------------------------------------------------------------------ executing

    def start(self, connection: Connection, task: Task, executor: str) -> Started:
        """Mark the task running unless it is finished. A task found `running` was started by an executor
        that never finished it: that run counts as lost."""
        now = utcnow()
        row = connection.execute(sql.START, {"task_id": task.task_id, "executor": executor, "now": now}).first()
        if row is not None:
            return Started(True, QUEUED, row.attempts, row.lost)
        state = connection.execute(sa.select(_tasks.c.state).where(_tasks.c.task_id == task.task_id)).scalar()
        if state is not None:
            return Started(False, state)
        # Unknown to the ledger (pruned, or sent by a producer that did not record it): record it now.
        connection.execute(_tasks.insert().values({**_new_row(task, RUNNING, now), "runs": 1, "executor": executor,
                                                   "started_at": now}))
        return Started(True, QUEUED)

    def claim_and_start(self, connection: Connection, params: Mapping[str, Any],
                        executor: str) -> tuple[Any, Started | None] | None:
        """PostgreSQL: the database queue's claim and the start of the task it claims, in one statement
        (CLAIM_AND_START_POSTGRESQL): one round trip on every task instead of two. `params` are the claim's
        (owner, lease seconds). Returns the claimed row and the start, or None when nothing was claimed. The
        start is None when the task was neither queued nor running (or is unknown to the ledger): the caller
        then calls start(), which finds out why in the same transaction."""
        row = connection.execute(sql.CLAIM_AND_START_POSTGRESQL,
                                 {**params, "executor": executor, "now": utcnow()}).first()
        if row is None:
            return None
        started = Started(True, QUEUED, row.attempts, row.lost) if row.attempts is not None else None
        return row, started

    def finish(self, connection: Connection, task: Task, frame: PredictionFrame, duration_ms: int) -> int:
        """The task's predictions and its `done` mark, in the caller's transaction; returns the rows."""
        def done(rows: int) -> FollowUp:
            return FollowUp(sql.FINISH, {"task_id": task.task_id, "rows": rows, "duration_ms": duration_ms,
                                         "now": utcnow(), "note": one_line(frame.note) if frame.note else None,
                                         "revision": frame.revision[:64] or None},
                            with_rows=sql.ROWS_AND_DONE_POSTGRESQL)

        return self.predictions.write(connection, frame, then=done)

    def retry_later(self, connection: Connection, task: Task, error: str) -> int:
        """The model ran and failed in a way worth retrying: back to queued, one attempt more; returns
        the attempts so far."""
        return connection.execute(
            sa.update(_tasks).where(_tasks.c.task_id == task.task_id)
            .values(state=QUEUED, attempts=_tasks.c.attempts + 1, error=one_line(error))
            .returning(_tasks.c.attempts)
        ).scalar_one()

    def fail(self, connection: Connection, task: Task, reason: str, duration_ms: int | None = None) -> None:
        connection.execute(
            sa.update(_tasks).where(_tasks.c.task_id == task.task_id)
            .values(state=FAILED, error=one_line(reason), finished_at=utcnow(), duration_ms=duration_ms)
        )

    def release(self, connection: Connection, task: Task, reason: str = "") -> None:
        """Handed back unfinished (shutdown, infrastructure fault, a peer down): queued again, counting
        nothing; `reason` (why it waits) is kept as the task's error for `latigo tasks list`."""
        values: dict[str, object] = {"state": QUEUED}
        if reason:
            values["error"] = one_line(reason)
        connection.execute(
            sa.update(_tasks).where(_tasks.c.task_id == task.task_id, _tasks.c.state == RUNNING).values(**values)
        )

    def dead_letter(self, connection: Connection, source: str, message_id: str | None, body: bytes,
                    error: str, task: Task | None = None) -> bool:
        """Keep an undecodable or unrecordable message once per (source, message id); False when it
        was kept already. A message without an id is known by its body's hash; a decoded `task` gives
        the row its project and model."""
        message_id = message_id or "sha256:" + hashlib.sha256(body).hexdigest()
        statement = dialect_insert(connection, _letters).on_conflict_do_nothing(index_elements=["source", "message_id"])
        named = {"project": task.project[:255], "model": task.model[:255]} if task is not None else {}
        inserted = connection.execute(statement.values(source=source[:255], message_id=message_id[:255], body=body,
                                                       error=one_line(error), received_at=utcnow(), **named))
        return _rowcount(inserted) > 0


class Enqueued(NamedTuple):
    new: int
    """Tasks the ledger did not know."""
    to_send: list[Task]
    """Tasks to put on the queue."""


def _new_row(task: Task, state: str, now: datetime) -> dict[str, Any]:
    return {"task_id": task.task_id, "project": task.project, "model": task.model, "window_start": task.window.start,
            "window_end": task.window.end, "state": state, "attempts": 0, "runs": 0, "lost": 0,
            "enqueued_at": now}


def _rowcount(result: Any) -> int:
    count = result.rowcount
    return max(count, 0) if count is not None else 0
