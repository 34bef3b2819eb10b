"""The scheduler: which windows are due, and the loop that enqueues them.

Ticks fall at `anchor + k·interval` (UTC). The tick at t schedules the window
[t − delay − interval, t − delay): `delay` gives the sensor data time to arrive.
Each model remembers the end of its last enqueued window in `schedule_state`, so
a restart enqueues every window it missed (bounded by catch_up_limit, oldest
first) and never a window twice. The window math is pure functions; the loop
around them only does I/O.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from latigo.config import SchedulerSettings
from latigo.errors import ConfigError
from latigo.interfaces import ModelInformationProvider, TaskQueue
from latigo.storage.db import write_transaction
from latigo.storage.tables import ScheduleState
from latigo.storage.upsert import dialect_insert
from latigo.types import Task, TimeRange, ensure_utc, parse_timestamp

log = logging.getLogger(__name__)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# ------------------------------------------------------------------ window math (pure)


@dataclass(frozen=True)
class Grid:
    """The schedule's time grid: window ends fall at anchor − delay + k·interval."""

    anchor: datetime
    interval: timedelta
    delay: timedelta

    def __post_init__(self) -> None:
        if self.interval <= timedelta(0):
            raise ValueError("scheduler.interval must be positive")
        if self.delay < timedelta(0):
            raise ValueError("scheduler.delay must not be negative")

    def last_tick(self, now: datetime) -> datetime:
        """The latest tick at or before `now`."""
        steps = math.floor((ensure_utc(now) - self.anchor) / self.interval)
        return self.anchor + steps * self.interval

    def next_tick(self, now: datetime) -> datetime:
        return self.last_tick(now) + self.interval

    def window_of_tick(self, tick: datetime) -> TimeRange:
        end = tick - self.delay
        return TimeRange(end - self.interval, end)

    def latest_window(self, now: datetime) -> TimeRange:
        """The newest window whose data is due at `now` (never ends after now − delay)."""
        return self.window_of_tick(self.last_tick(now))

    def align_up(self, instant: datetime) -> datetime:
        """The first window boundary at or after `instant`."""
        origin = self.anchor - self.delay
        steps = math.ceil((ensure_utc(instant) - origin) / self.interval)
        return origin + steps * self.interval

    def windows_between(self, start: datetime, end: datetime) -> list[TimeRange]:
        """Every whole grid window inside [start, end), oldest first."""
        first = self.align_up(start)
        count = max(0, math.floor((ensure_utc(end) - first) / self.interval))
        return [TimeRange(first + i * self.interval, first + (i + 1) * self.interval) for i in range(count)]


def due_windows(
    grid: Grid, now: datetime, last_window_end: datetime | None, catch_up_limit: timedelta
) -> list[TimeRange]:
    """Windows to enqueue for one model, oldest first.

    A new model (no state) gets the current window only. A known model gets every window after
    its last one up to the current one, but none starting more than `catch_up_limit` before the
    current window's end (an outage longer than that is a job for `latigo backfill`)."""
    latest = grid.latest_window(now)
    if last_window_end is None:
        return [latest]
    earliest_start = max(ensure_utc(last_window_end), latest.end - max(catch_up_limit, grid.interval))
    return grid.windows_between(earliest_start, latest.end)


def parse_anchor(start_time: str) -> datetime:
    """`"HH:MM"` (a UTC time of day: the grid runs through it every day) or an ISO 8601 instant."""
    text = start_time.strip()
    try:
        if len(text) <= 8 and ":" in text:
            of_day = time.fromisoformat(text)
            return datetime.combine(EPOCH.date(), of_day, tzinfo=timezone.utc)
        return parse_timestamp(text, "scheduler.start_time")
    except ValueError:
        raise ConfigError(
            f"scheduler.start_time: {start_time!r} is neither a time of day (HH:MM) nor an ISO 8601 instant with zone"
        ) from None


def grid_from_settings(settings: SchedulerSettings) -> Grid:
    try:
        return Grid(parse_anchor(settings.start_time), settings.interval, settings.delay)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def batched(items: Sequence[Task], size: int) -> Iterable[Sequence[Task]]:
    for index in range(0, len(items), size):
        yield items[index : index + size]


# ------------------------------------------------------------------ the loop (I/O)


class Scheduler:
    def __init__(
        self,
        settings: SchedulerSettings,
        models: ModelInformationProvider,
        queue: TaskQueue,
        engine: Engine,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        on_cycle: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.grid = grid_from_settings(settings)
        self.models, self.queue, self.engine = models, queue, engine
        self.clock = clock
        self.on_cycle = on_cycle

    def run_cycle(self, now: datetime | None = None) -> int:
        """Enqueue every due window of every current model; returns the number of tasks enqueued."""
        now = now or self.clock()
        names = sorted(set(self.models.get_model_list()))
        states = self._load_state()
        tasks = [
            Task(name, window)
            for name in names
            for window in due_windows(self.grid, now, states.get(name), self.settings.catch_up_limit)
        ]
        tasks.sort(key=lambda t: (t.window.start, t.model))
        count = self.enqueue(tasks, advance_state=True)
        log.info("scheduled %d tasks for %d models (windows up to %s)", count, len(names),
                 self.grid.latest_window(now).end.isoformat())
        if self.on_cycle:
            self.on_cycle(count)
        return count

    def enqueue(self, tasks: Sequence[Task], advance_state: bool, progress: Callable[[int], None] | None = None) -> int:
        """Enqueue in batches; with `advance_state` each batch's schedule_state update commits with it
        (for the database queue, in the same transaction)."""
        total = 0
        for batch in batched(tasks, self.settings.batch_size):
            with write_transaction(self.engine) as connection:
                # The database queue inserts inside this transaction; a broker queue sends before it commits
                # (a crash in between re-sends, and the ledger dedupes). Either records the ledger rows in it.
                self.queue.put_many(batch, connection=connection)
                if advance_state:
                    self._advance_state(connection, batch)
            total += len(batch)
            if progress:
                progress(len(batch))
        return total

    def backfill(self, start: datetime, end: datetime, models: Sequence[str] | None = None,
                 progress: Callable[[int], None] | None = None) -> int:
        """Enqueue every grid window inside [start, end) for the given (default: all) models.
        Leaves schedule_state alone: a backfill fills the past, the live schedule goes on."""
        names = sorted(set(models)) if models else sorted(set(self.models.get_model_list()))
        unknown = [name for name in names if not self.models.model_exists(name)] if models else []
        if unknown:
            raise ConfigError(f"backfill: unknown model(s): {', '.join(unknown)}")
        windows = self.grid.windows_between(start, end)
        tasks = sorted((Task(name, w) for name in names for w in windows), key=lambda t: (t.window.start, t.model))
        return self.enqueue(tasks, advance_state=False, progress=progress)

    def _load_state(self) -> dict[str, datetime]:
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(ScheduleState.model, ScheduleState.last_window_end)).all()
        return {model: end for model, end in rows}

    def _advance_state(self, connection: Connection, batch: Sequence[Task]) -> None:
        newest: dict[str, datetime] = {}
        for task in batch:
            newest[task.model] = max(newest.get(task.model, task.window.end), task.window.end)
        now = datetime.now(timezone.utc)
        table = ScheduleState.__table__
        statement = dialect_insert(connection, table)
        statement = statement.on_conflict_do_update(
            index_elements=["model"],
            set_={"last_window_end": sa.func.max(table.c.last_window_end, statement.excluded.last_window_end)
                  if connection.dialect.name == "sqlite"
                  else sa.func.greatest(table.c.last_window_end, statement.excluded.last_window_end),
                  "updated_at": statement.excluded.updated_at},
        )
        connection.execute(statement, [{"model": m, "last_window_end": e, "updated_at": now}
                                       for m, e in newest.items()])

    def run(self, stop: threading.Event, on_tick: Callable[[], None] | None = None) -> None:
        """Schedule at every tick until `stop` is set; errors of one cycle are logged and retried."""
        if self.settings.run_at_once:
            self._safe_cycle()
        next_tick = self.grid.next_tick(self.clock())
        while not stop.is_set():
            if on_tick:
                on_tick()
            now = self.clock()
            if now >= next_tick and self._safe_cycle():
                next_tick = self.grid.next_tick(now)
            wait = min(self.settings.check_interval, max(next_tick - self.clock(), timedelta(0)))
            stop.wait(max(wait.total_seconds(), 0.05))

    def _safe_cycle(self) -> bool:
        try:
            self.run_cycle()
            return True
        except Exception:
            log.exception("scheduling cycle failed; retrying in %s", self.settings.check_interval)
            return False
