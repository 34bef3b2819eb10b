"""`latigo status`: what the ledger and the queue say, for a person or (with --json) a script."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from latigo.lifecycle import DONE, FAILED, QUEUED
from latigo.storage.tables import DeadLetter, Prediction, QueuedTask, TaskRecord


@dataclass
class Failure:
    task_id: str
    model: str
    window_start: str
    attempts: int
    runs: int
    error: str
    finished_at: str | None


@dataclass
class StatusReport:
    tasks: dict[str, int]
    queue_size: int
    queue_available: int
    oldest_queued_age_seconds: float | None
    prediction_rows: int
    dead_letters: int
    last_failures: list[Failure] = field(default_factory=list)
    last_predicted_window: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def to_text(self) -> str:
        states = ", ".join(f"{state} {count}" for state, count in sorted(self.tasks.items())) or "none"
        age = "-" if self.oldest_queued_age_seconds is None else _age(self.oldest_queued_age_seconds)
        lines = [
            f"tasks:            {states}",
            f"queue:            {self.queue_size} queued ({self.queue_available} claimable now)",
            f"oldest queued:    {age}",
            f"prediction rows:  {self.prediction_rows}",
            f"dead letters:     {self.dead_letters}",
        ]
        if self.last_failures:
            lines.append("last failures:")
            lines += [f"  {f.model} {f.window_start} (runs {f.runs}, failed attempts {f.attempts}): {f.error}"
                      for f in self.last_failures]
        if self.last_predicted_window:
            lines.append("last predicted window end per model:")
            width = max(len(m) for m in self.last_predicted_window)
            lines += [f"  {m:<{width}}  {end}" for m, end in sorted(self.last_predicted_window.items())]
        return "\n".join(lines) + "\n"


def _age(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s"


def task_counts(engine: Engine) -> dict[str, int]:
    """Tasks per ledger state."""
    with engine.connect() as connection:
        rows = connection.execute(sa.select(TaskRecord.state, sa.func.count()).group_by(TaskRecord.state)).all()
    return {state: count for state, count in rows}


def collect_status(engine: Engine, failures: int = 10, now: datetime | None = None) -> StatusReport:
    now = now or datetime.now(timezone.utc)
    with engine.connect() as c:
        tasks = dict(c.execute(sa.select(TaskRecord.state, sa.func.count()).group_by(TaskRecord.state)).all())
        queue_size = c.execute(sa.select(sa.func.count()).select_from(QueuedTask)).scalar_one()
        available = c.execute(sa.select(sa.func.count()).select_from(QueuedTask)
                              .where(QueuedTask.available_at <= sa.literal(now, QueuedTask.available_at.type))
                              ).scalar_one()
        oldest = c.execute(sa.select(sa.func.min(TaskRecord.enqueued_at)).where(TaskRecord.state == QUEUED)).scalar()
        rows = c.execute(sa.select(sa.func.count()).select_from(Prediction)).scalar_one()
        letters = c.execute(sa.select(sa.func.count()).select_from(DeadLetter)).scalar_one()
        failed = c.execute(sa.select(TaskRecord).where(TaskRecord.state == FAILED)
                           .order_by(TaskRecord.finished_at.desc()).limit(failures)).all()
        last = c.execute(sa.select(TaskRecord.model, sa.func.max(TaskRecord.window_end))
                         .where(TaskRecord.state == DONE).group_by(TaskRecord.model)).all()
    oldest = _utc(oldest)
    return StatusReport(
        tasks=tasks, queue_size=queue_size, queue_available=available,
        oldest_queued_age_seconds=(now - oldest).total_seconds() if oldest else None,
        prediction_rows=rows, dead_letters=letters,
        last_failures=[Failure(f.task_id, f.model, f.window_start.isoformat(), f.attempts, f.runs, f.error or "",
                               f.finished_at.isoformat() if f.finished_at else None) for f in failed],
        last_predicted_window={model: _utc(end).isoformat() for model, end in last},
    )


def _utc(value: Any) -> datetime | None:
    """Aggregates (min/max) bypass the column type on SQLite and come back as text."""
    if value is None or isinstance(value, datetime):
        return value.replace(tzinfo=value.tzinfo or timezone.utc) if value else None
    return datetime.fromisoformat(str(value)).replace(tzinfo=timezone.utc)
