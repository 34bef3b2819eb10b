"""The task ledger: what happened to every task id, and the dead-letter store.

The ledger is what makes redelivery harmless: a task whose id is `done` is
acknowledged and skipped, and `done` is written in the same transaction as the
task's predictions, so "done" always means "its rows are stored".
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection, Engine

from latigo.storage.db import write_transaction
from latigo.storage.tables import DeadLetter, TaskRecord
from latigo.storage.upsert import dialect_insert
from latigo.types import Task

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
MAX_ERROR_LENGTH = 2000


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def one_line(text: str, limit: int = MAX_ERROR_LENGTH) -> str:
    flat = " ".join(str(text).split())
    return flat[:limit]


class Ledger:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record_enqueued(self, connection: Connection, tasks: Iterable[Task]) -> None:
        """Add `queued` rows for new task ids; a task already known keeps its state (a re-enqueued
        done task stays done, so the executor skips it)."""
        now = utcnow()
        rows = [
            {"task_id": t.task_id, "model": t.model, "window_start": t.window.start, "window_end": t.window.end,
             "state": QUEUED, "attempts": 0, "enqueued_at": now}
            for t in tasks
        ]
        if rows:
            statement = dialect_insert(connection, TaskRecord.__table__).on_conflict_do_nothing(
                index_elements=["task_id"]
            )
            connection.execute(statement, rows)

    def state_of(self, task_id: str) -> tuple[str, int] | None:
        """(state, attempts) of a task, or None when the ledger has never seen it."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(TaskRecord.state, TaskRecord.attempts).where(TaskRecord.task_id == task_id)
            ).first()
        return (row.state, row.attempts) if row else None

    def mark_running(self, task: Task, executor: str) -> int:
        """Count one more attempt and return the attempt number."""
        now = utcnow()
        with write_transaction(self.engine) as connection:
            statement = dialect_insert(connection, TaskRecord.__table__)
            statement = statement.on_conflict_do_update(
                index_elements=["task_id"],
                set_={"state": RUNNING, "attempts": TaskRecord.__table__.c.attempts + 1, "executor": executor,
                      "started_at": now, "error": None},
            )
            connection.execute(statement, {
                "task_id": task.task_id, "model": task.model, "window_start": task.window.start,
                "window_end": task.window.end, "state": RUNNING, "attempts": 1, "executor": executor,
                "enqueued_at": now, "started_at": now,
            })
            attempts = connection.execute(
                select(TaskRecord.attempts).where(TaskRecord.task_id == task.task_id)
            ).scalar_one()
        return attempts

    def mark_done(self, connection: Connection, task: Task, rows: int, duration_ms: int) -> None:
        """Inside the transaction that wrote the task's predictions."""
        connection.execute(
            update(TaskRecord)
            .where(TaskRecord.task_id == task.task_id)
            .values(state=DONE, rows=rows, duration_ms=duration_ms, finished_at=utcnow(), error=None)
        )

    def mark_failed(self, task: Task, error: str, duration_ms: int | None = None) -> None:
        with write_transaction(self.engine) as connection:
            connection.execute(
                update(TaskRecord)
                .where(TaskRecord.task_id == task.task_id)
                .values(state=FAILED, error=one_line(error), finished_at=utcnow(), duration_ms=duration_ms)
            )

    def mark_released(self, task: Task) -> None:
        """Back to `queued` when a stopping executor hands an unfinished task back."""
        with write_transaction(self.engine) as connection:
            connection.execute(
                update(TaskRecord).where(TaskRecord.task_id == task.task_id, TaskRecord.state == RUNNING)
                .values(state=QUEUED)
            )

    def dead_letter(self, source: str, message_id: str | None, body: bytes, error: str) -> None:
        with write_transaction(self.engine) as connection:
            connection.execute(
                DeadLetter.__table__.insert().values(
                    source=source, message_id=message_id, body=body, error=one_line(error), received_at=utcnow()
                )
            )

    def counts_by_state(self) -> dict[str, int]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(TaskRecord.state, func.count()).group_by(TaskRecord.state)).all()
        return {state: count for state, count in rows}
