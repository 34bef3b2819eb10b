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
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from datetime import time as time_of_day
from typing import NamedTuple

import sqlalchemy as sa

from latigo.errors import ConfigError, LatigoError, describe_exception
from latigo.interfaces import ModelInformationProvider, TaskQueue
from latigo.lifecycle import CANCELLED, DONE, FAILED, MAX_NAME_LENGTH, QUEUED, TaskFilter, TaskLifecycle
from latigo.observability import DATABASE_FAULTS, DATABASE_READY
from latigo.retention import Retention, prune
from latigo.settings import RetentionSettings, SchedulerSettings
from latigo.storage.faults import is_infrastructure_fault
from latigo.storage.prediction_store import PredictionStore
from latigo.storage.tables import ScheduleState
from latigo.types import DEFAULT_PROJECT, ModelRef, Task, TimeRange, ensure_utc, parse_timestamp

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
    """Windows to enqueue for one model, oldest first (see `plan_windows`)."""
    return plan_windows(grid, now, last_window_end, catch_up_limit).windows


class WindowPlan(NamedTuple):
    windows: list[TimeRange]
    skipped: int
    """Windows missed during an outage longer than catch_up_limit: not scheduled (a job for backfill)."""


def plan_windows(
    grid: Grid, now: datetime, last_window_end: datetime | None, catch_up_limit: timedelta
) -> WindowPlan:
    """A new model (no state) gets the current window only. A known model gets every window after its
    last one up to the current one, but none starting more than `catch_up_limit` before the current
    window's end; the ones left out are counted."""
    latest = grid.latest_window(now)
    if last_window_end is None:
        return WindowPlan([latest], 0)
    last = ensure_utc(last_window_end)
    earliest_start = max(last, latest.end - max(catch_up_limit, grid.interval))
    windows = grid.windows_between(earliest_start, latest.end)
    skipped = len(grid.windows_between(last, earliest_start)) if earliest_start > last else 0
    return WindowPlan(windows, skipped)


def parse_anchor(start_time: str) -> datetime:
    """`"HH:MM"` (a UTC time of day: the grid runs through it every day) or an ISO 8601 instant."""
    text = start_time.strip()
    try:
        if len(text) <= 8 and ":" in text:
            of_day = time_of_day.fromisoformat(text)
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


def as_refs(listed: Iterable[ModelRef | str]) -> list[ModelRef]:
    """A provider's listing as (project, name): a plain name (a plug-in without projects) is a model of the
    default project."""
    return [item if isinstance(item, ModelRef) else ModelRef(DEFAULT_PROJECT, str(item)) for item in listed]


def project_name_problem(project: str) -> str:
    """Why the ledger cannot hold a task of this project, or ''."""
    problem = model_name_problem(project)
    return problem.replace("the name", "the project name") if problem else ""


def model_name_problem(name: str) -> str:
    """Why the ledger cannot hold a task for this model name, or ''."""
    if not name or not name.strip():
        return "the name is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"the name is {len(name)} characters; the ledger holds at most {MAX_NAME_LENGTH}"
    if "\x00" in name:
        return "the name contains a NUL character"
    return ""


class Scheduler:
    def __init__(
        self,
        settings: SchedulerSettings,
        models: ModelInformationProvider,
        queue: TaskQueue,
        lifecycle: TaskLifecycle,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        on_cycle: Callable[[int], None] | None = None,
        chores: Sequence[Chore] = (),
        partitions_ahead: timedelta | None = None,
    ) -> None:
        self.settings = settings
        self.grid = grid_from_settings(settings)
        self.models, self.queue, self.lifecycle = models, queue, lifecycle
        self.clock = clock
        self.on_cycle = on_cycle
        self.chores = list(chores)
        self.partitions_ahead = partitions_ahead
        """When set, each cycle makes sure prediction partitions exist this far ahead (PostgreSQL)."""
        self.rejected: dict[ModelRef, str] = {}
        """Models left out of the last cycle, with the reason."""

    def run_cycle(self, now: datetime | None = None) -> int:
        """Enqueue every due window of every current model; returns the number of new tasks."""
        now = now or self.clock()
        if self.partitions_ahead is not None:
            self.lifecycle.predictions.ensure_ahead(now, behind=self.settings.catch_up_limit + self.settings.interval,
                                                    ahead=self.partitions_ahead)
        refs = self._schedulable(self.models.get_model_list())
        states = self._load_state()
        tasks: list[Task] = []
        skipped: dict[ModelRef, int] = {}
        for ref in refs:
            plan = plan_windows(self.grid, now, states.get(ref), self.settings.catch_up_limit)
            tasks.extend(Task(ref.name, window, ref.project) for window in plan.windows)
            if plan.skipped:
                skipped[ref] = plan.skipped
        if skipped:
            log.warning("catch-up limit %s: %d windows of %d models were not scheduled (use `latigo backfill` for "
                        "them), e.g. %s", self.settings.catch_up_limit, sum(skipped.values()), len(skipped),
                        ", ".join(f"{m}: {n}" for m, n in list(skipped.items())[:5]))
        tasks.sort(key=lambda t: (t.window.start, t.project, t.model))
        new = self.enqueue(tasks, advance_state=True)
        log.info("scheduled %d new tasks (%d due) for %d models in %d projects (windows up to %s)", new, len(tasks),
                 len(refs), len({ref.project for ref in refs}), self.grid.latest_window(now).end.isoformat())
        if self.on_cycle:
            self.on_cycle(new)
        return new

    def _schedulable(self, listed: Sequence[ModelRef | str]) -> list[ModelRef]:
        """The listed models the ledger can hold; each other one is left out with its reason, alone."""
        refs, rejected = [], {}
        for ref in sorted(set(as_refs(listed))):
            problem = model_name_problem(ref.name) or project_name_problem(ref.project)
            if problem:
                rejected[ref] = problem
            else:
                refs.append(ref)
        for ref, problem in rejected.items():
            if self.rejected.get(ref) != problem:
                log.error("model %r is not scheduled: %s", ref.label[:80], problem)
        self.rejected = rejected
        return refs

    def enqueue(self, tasks: Sequence[Task], advance_state: bool, progress: Callable[[int], None] | None = None) -> int:
        """Enqueue in batches: ledger rows, the queue's messages and (with `advance_state`) the schedule
        state commit together for the database queue; a broker queue sends inside the transaction, so a
        failed send rolls the batch back (a crash after sending re-sends, and the ledger dedupes).
        Returns how many tasks were new to the ledger."""
        new = 0
        for batch in batched(tasks, self.settings.batch_size):
            with self.lifecycle.transaction() as connection:
                enqueued = self.lifecycle.enqueue(connection, batch)
                self.queue.put_many(enqueued.to_send, connection=connection)
                if advance_state:
                    self.lifecycle.advance_schedule(connection, batch)
            new += enqueued.new
            if progress:
                progress(len(batch))
        return new

    def backfill(self, start: datetime, end: datetime, models: Sequence[str] | None = None,
                 progress: Callable[[int], None] | None = None, rerun: bool = False,
                 projects: Sequence[str] | None = None) -> int:
        """Enqueue every grid window inside [start, end) for the given (default: all) models of the given
        (default: all) projects; with `rerun`, windows already done (or failed) are computed again. Leaves
        schedule_state alone: a backfill fills the past, the live schedule goes on. Returns how many tasks
        will run."""
        tasks = self.backfill_tasks(start, end, self.backfill_models(models, projects))
        return self.enqueue_backfill(tasks, rerun, progress)

    def enqueue_backfill(self, tasks: Sequence[Task], rerun: bool = False,
                         progress: Callable[[int], None] | None = None) -> int:
        if rerun:
            return self._rerun(tasks, progress)
        return self.enqueue(tasks, advance_state=False, progress=progress)

    def backfill_models(self, models: Sequence[str] | None, projects: Sequence[str] | None = None) -> list[ModelRef]:
        """The listed models with these names (`name`, or `project/name`) in these projects (default: every
        one); a name or project that matches nothing is an error naming it."""
        listed = self._schedulable(self.models.get_model_list())
        if projects:
            unknown_projects = sorted(set(projects) - {ref.project for ref in listed})
            if unknown_projects:
                raise ConfigError(f"backfill: no models listed in project(s): {', '.join(unknown_projects)}")
            listed = [ref for ref in listed if ref.project in set(projects)]
        if not models:
            return listed
        chosen: list[ModelRef] = []
        unknown = []
        for wanted in sorted(set(models)):
            matches = [ref for ref in listed if wanted in (ref.name, str(ref))]
            if matches:
                chosen.extend(matches)
            else:
                unknown.append(wanted)
        if unknown:
            raise ConfigError(f"backfill: unknown model(s): {', '.join(name[:80] for name in unknown)}")
        return sorted(set(chosen))

    def backfill_tasks(self, start: datetime, end: datetime, refs: Sequence[ModelRef]) -> list[Task]:
        windows = self.grid.windows_between(start, end)
        return sorted((Task(ref.name, w, ref.project) for ref in refs for w in windows),
                      key=lambda t: (t.window.start, t.project, t.model))

    def _rerun(self, tasks: Sequence[Task], progress: Callable[[int], None] | None) -> int:
        total = 0
        for batch in batched(tasks, self.settings.batch_size):
            with self.lifecycle.transaction() as connection:
                self.lifecycle.enqueue(connection, batch)
                again = self.lifecycle.requeue(connection, TaskFilter(task_ids=tuple(t.task_id for t in batch),
                                                                      states=(DONE, FAILED, QUEUED, CANCELLED)))
                self.queue.put_many(again, connection=connection)
            total += len(again)
            if progress:
                progress(len(batch))
        return total

    def _load_state(self) -> dict[ModelRef, datetime]:
        with self.lifecycle.engine.connect() as connection:
            rows = connection.execute(sa.select(ScheduleState.project, ScheduleState.model,
                                                ScheduleState.last_window_end)).all()
        return {ModelRef(project, model): end for project, model, end in rows}

    def run(self, stop: threading.Event, on_tick: Callable[[], None] | None = None) -> None:
        """Schedule at every tick until `stop` is set. A failed cycle is retried with backoff within
        seconds (never left to the next tick); the chores (retention, alerts) run at their own intervals."""
        failures = 0
        next_try = self.clock() if self.settings.run_at_once else self.grid.next_tick(self.clock())
        while not stop.is_set():
            if on_tick:
                on_tick()
            now = self.clock()
            if now >= next_try:
                if self._safe_cycle():
                    failures = 0
                    next_try = self.grid.next_tick(now)
                else:
                    failures += 1
                    next_try = now + timedelta(seconds=_retry_delay(failures, self.settings.check_interval))
            for chore in self.chores:
                chore.maybe_run()
            wait = min(self.settings.check_interval, max(next_try - self.clock(), timedelta(0)))
            stop.wait(max(wait.total_seconds(), 0.05))

    def _safe_cycle(self) -> bool:
        try:
            self.run_cycle()
            return True
        except Exception as exc:
            log.error("scheduling cycle failed (%s); retrying shortly", describe_exception(exc),
                      exc_info=not isinstance(exc, LatigoError) and not is_infrastructure_fault(exc))
            if is_infrastructure_fault(exc):
                DATABASE_FAULTS.inc()
                DATABASE_READY.set(0)
            return False



@dataclass
class Chore:
    """Work the scheduler's loop does every `interval` besides scheduling (retention, anomaly alerts). A
    failure is logged and the chore tried again at its next interval; it never stops the schedule."""

    name: str
    interval: timedelta
    work: Callable[[], str]
    """Does the work; returns a line to log, or ''."""
    last_run: float | None = None

    def maybe_run(self) -> None:
        now = time.monotonic()
        if self.last_run is not None and now - self.last_run < self.interval.total_seconds():
            return
        self.last_run = now
        try:
            said = self.work()
        except Exception as exc:
            log.warning("%s failed (%s); trying again in %s", self.name, describe_exception(exc), self.interval)
            return
        if said:
            log.info("%s: %s", self.name, said)


def retention_chore(store: PredictionStore, settings: RetentionSettings) -> Chore:
    def past_retention() -> str:
        deleted = prune(store, retention_of(settings))
        return ", ".join(f"{count} {table}" for table, count in deleted.items() if count)

    return Chore("pruning past retention", settings.prune_interval, past_retention)


def retention_of(settings: RetentionSettings) -> Retention:
    return Retention(predictions=settings.predictions, tasks=settings.tasks, dead_letters=settings.dead_letters,
                     schedule_state=settings.schedule_state)


def _retry_delay(failures: int, cap: timedelta) -> float:
    """1, 2, 4 ... seconds, at most check_interval (and at least a second)."""
    return min(2.0 ** (failures - 1), max(cap.total_seconds(), 1.0))
