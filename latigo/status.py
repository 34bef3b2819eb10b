"""`latigo status`: what the ledger and the queue say, for a person or (with --json) a script."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy.engine import Engine

from latigo.lifecycle import FAILED
from latigo.peer_status import peers_down
from latigo.storage import reads
from latigo.storage.db import utc_from_db
from latigo.types import ModelRef


@dataclass
class Failure:
    task_id: str
    project: str
    model: str
    window_start: str
    attempts: int
    runs: int
    error: str
    finished_at: str | None


@dataclass
class PeerDown:
    peer: str
    down_since: str
    reason: str
    executors: int


@dataclass
class ModelStatus:
    """One model as the ledger sees it: its newest done window and its newest task."""

    project: str
    model: str
    last_done_end: str | None
    newest_state: str | None
    newest_window_end: str | None
    late: bool
    failing: bool

    @property
    def label(self) -> str:
        return ModelRef(self.project, self.model).label


SCREEN_LINES = 40
"""Without a terminal to measure (a pipe), `latigo status` prints at most this many lines."""


@dataclass
class StatusReport:
    tasks: dict[str, int]
    queue_size: int
    queue_available: int
    oldest_queued_age_seconds: float | None
    prediction_rows: int
    dead_letters: int
    prediction_rows_estimated: bool = False
    tasks_estimated: bool = False
    """`done` is PostgreSQL's estimate (a large ledger); the other states are counted."""
    last_failures: list[Failure] = field(default_factory=list)
    last_predicted_window: dict[str, str] = field(default_factory=dict)
    models: list[ModelStatus] = field(default_factory=list)
    """Every model (of the projects or models asked for), for scripts; the text shows the late and failing."""
    late_after_seconds: float = 0.0
    peers_down: list[PeerDown] = field(default_factory=list)
    """Peers some executor sees down (its circuit breaker open): their tasks wait, unrun."""
    queue_lag: dict[str, int] | None = None
    """Per partition, messages the executors' consumer group has not committed (Kafka); None: not asked."""
    queue_lag_error: str = ""
    """Why the queue lag could not be read (the brokers did not answer)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def to_text(self, lines: int | None = None, every_model: bool = False) -> str:
        """The report in at most `lines` lines (the terminal's height by default): the totals, then the
        newest failures and the late or failing models, each list cut with "and N more"; with
        `every_model` (one model or project asked for) every model's line."""
        height = lines if lines is not None else shutil.get_terminal_size((100, SCREEN_LINES)).lines
        out = self._totals()
        room = max(height - len(out) - 1, 4)  # one line for the shell's prompt
        attention = sorted((m for m in self.models if m.late or m.failing),
                           key=lambda m: (not m.failing, m.project, m.model))  # failing first
        shown_models = self.models if every_model else attention
        failures_room = min(len(self.last_failures) + 1, max(room // 3, 2)) if self.last_failures else 0
        if self.last_failures:
            out += _cut("last failures (newest first):", [
                f"  {ModelRef(f.project, f.model).label} {f.window_start} (runs {f.runs}, failed attempts "
                f"{f.attempts}): {f.error}" for f in self.last_failures], failures_room)
        if shown_models:
            width = min(max(len(m.label) for m in shown_models), 60)
            title = ("models:" if every_model else
                     f"late or failing models ({len(attention)} of {len(self.models)}; late: no window done for "
                     f"{_age(self.late_after_seconds)}):")
            out += _cut(title, [f"  {m.label:<{width}}  {_model_line(m)}" for m in shown_models],
                        max(room - failures_room, 2))
        elif self.models:
            out.append(f"models:           all {len(self.models)} up to date (none late or failing)")
        return "\n".join(out) + "\n"

    def _totals(self) -> list[str]:
        states = ", ".join(f"{state} {'~' if state == 'done' and self.tasks_estimated else ''}{count}"
                           for state, count in sorted(self.tasks.items())) or "none"
        age = "-" if self.oldest_queued_age_seconds is None else _age(self.oldest_queued_age_seconds)
        late = sum(1 for m in self.models if m.late)
        failing = sum(1 for m in self.models if m.failing)
        lines = [f"PEER DOWN:        {p.peer} since {p.down_since} (seen by {p.executors} executor"
                 f"{'s' if p.executors != 1 else ''}): {p.reason}" for p in self.peers_down]
        lines += [
            f"tasks:            {states}",
            f"queue:            {self.queue_size} queued ({self.queue_available} claimable now)",
            f"oldest queued:    {age}",
            f"prediction rows:  {'~' if self.prediction_rows_estimated else ''}{self.prediction_rows}"
            + (" (PostgreSQL's statistics)" if self.prediction_rows_estimated else ""),
            f"dead letters:     {self.dead_letters}",
            f"models:           {len(self.models)} ({late} late, {failing} failing)",
        ]
        if self.queue_lag is not None:
            per_partition = ", ".join(f"{p}: {n}" for p, n in sorted(self.queue_lag.items(), key=lambda i: int(i[0])))
            lines.append(f"queue lag:        {sum(self.queue_lag.values())} uncommitted (by partition {per_partition})")
        elif self.queue_lag_error:
            lines.append(f"queue lag:        unknown ({self.queue_lag_error})")
        return lines


def _cut(title: str, items: Sequence[str], room: int) -> list[str]:
    """A title and as many items as fit in `room` lines, the last one saying how many were left out."""
    if len(items) + 1 <= room:
        return [title, *items]
    keep = max(room - 2, 0)
    return [title, *items[:keep], f"  ... and {len(items) - keep} more (--json lists them all)"]


def _model_line(m: ModelStatus) -> str:
    flags = ", ".join(flag for flag, on in (("late", m.late), ("failing", m.failing)) if on)
    return (f"last window done {m.last_done_end or 'never'}; newest task {m.newest_state or '-'} "
            f"(window end {m.newest_window_end or '-'})" + (f"  [{flags}]" if flags else ""))


def _age(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s"


def collect_status(engine: Engine, failures: int = 10, now: datetime | None = None,
                   projects: tuple[str, ...] = (), models: tuple[str, ...] = (),
                   late_after: timedelta = timedelta(minutes=65)) -> StatusReport:
    """The report; with `projects` (or `models`, by name or project/name), its failures and models are
    those only. A model is late when no window of it was done for `late_after` (or none ever was),
    failing when its newest task failed."""
    now = now or datetime.now(timezone.utc)
    with engine.connect() as c:
        tasks, tasks_estimated = reads.ledger_counts(c)
        queue_size, available = reads.queue_sizes(c, now)
        oldest = reads.oldest_queued(c)
        rows, estimated = reads.prediction_rows(c)
        letters = reads.dead_letter_count(c)
        failed = reads.newest_failures(c, failures, projects, models)
        ledger = [row for row in reads.model_ledger(c) if (not projects or row[0] in projects)
                  and (not models or row[1] in models or f"{row[0]}/{row[1]}" in models)]
        down = peers_down(c, now)
    last = [(project, model, done) for project, model, done, _state, _end in ledger if done is not None]
    return StatusReport(
        tasks=tasks, queue_size=queue_size, queue_available=available,
        oldest_queued_age_seconds=(now - oldest).total_seconds() if oldest else None,
        prediction_rows=rows, prediction_rows_estimated=estimated, dead_letters=letters,
        tasks_estimated=tasks_estimated,
        peers_down=[PeerDown(p.peer, p.down_since.isoformat(timespec="seconds"), p.reason, p.executors) for p in down],
        last_failures=[Failure(f.task_id, f.project, f.model, f.window_start.isoformat(), f.attempts, f.runs,
                               f.error or "",
                               f.finished_at.isoformat() if f.finished_at else None) for f in failed],
        last_predicted_window={ModelRef(project, model).label: end.isoformat() for project, model, end in
                               ((project, model, utc_from_db(end)) for project, model, end in last)
                               if end is not None},
        models=[_model_status(row, now, late_after) for row in ledger],
        late_after_seconds=late_after.total_seconds(),
    )


def _model_status(row: reads.LedgerRow, now: datetime, late_after: timedelta) -> ModelStatus:
    project, model, done, state, newest_end = row
    done, newest_end = utc_from_db(done), utc_from_db(newest_end)
    return ModelStatus(project, model, done.isoformat() if done else None, state,
                       newest_end.isoformat() if newest_end else None,
                       late=done is None or now - done > late_after, failing=state == FAILED)


def collect_queue_lag(config: Any) -> tuple[dict[str, int] | None, str]:
    """(lag per partition, or None, and why not) from a queue that can tell (Kafka: the brokers' high
    watermarks against the group's commits); the database queue's backlog is in the report already."""
    from latigo.errors import describe_exception
    from latigo.factory import Components, implementation
    from latigo.interfaces import TaskQueue

    cls = implementation("task_queue", config.task_queue.type)
    if getattr(cls, "group_lag", TaskQueue.group_lag) is TaskQueue.group_lag:
        return None, ""
    queue = None
    try:
        queue = cls.from_settings(config.task_queue.settings, Components(config))
        lag = queue.group_lag()
        return (dict(lag) if lag is not None else None), ""
    except Exception as exc:  # the report goes on without it, saying why
        return None, describe_exception(exc)
    finally:
        if queue is not None:
            queue.close()
