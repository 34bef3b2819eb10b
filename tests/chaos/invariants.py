"""The invariants every chaos scenario asserts on the database once the run has ended.

- every expected (model, window) is `done` exactly once in the ledger (`tasks`), with exactly the
  prediction rows StaticModels writes for it (in `predictions` and in the ledger's `rows`);
- no task `failed` (or left with an error) for an infrastructure reason;
- no duplicate prediction keys;
- nothing leased in `task_queue` and nothing `running`;
- nothing looping: `runs` per task stays under a bound the scenario sets (the max is reported).

All problems are collected and raised together, so one failing run shows everything that went wrong.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from latigo.config import DatabaseSettings
from latigo.storage.db import create_engine_for
from latigo.storage.tables import DeadLetter, Prediction, QueuedTask, TaskRecord
from tests.support.providers import expected_rows

TaskKey = tuple[str, datetime, datetime]

INFRASTRUCTURE = re.compile(
    r"OperationalError|InterfaceError|database is locked|server closed the connection|connection already closed"
    r"|terminating connection|the database system is (shutting down|starting up)|could not connect to server"
    r"|connection refused|DisconnectionError|QueuePool limit",
    re.IGNORECASE,
)


@dataclass
class LedgerSummary:
    tasks: int
    """Expected tasks."""
    done: int
    failed: int
    runs_max: int
    lost: int
    attempts: int
    dead_letters: int
    predictions: int
    states: dict[str, int]


def _engine(url: str) -> sa.Engine:
    return create_engine_for(DatabaseSettings(url=url))


def read_ledger(url: str) -> list[sa.Row]:
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(sa.select(
                TaskRecord.task_id, TaskRecord.model, TaskRecord.window_start, TaskRecord.window_end,
                TaskRecord.state, TaskRecord.attempts, TaskRecord.runs, TaskRecord.lost, TaskRecord.error,
                TaskRecord.rows)).all())
    finally:
        engine.dispose()


def dead_letters(url: str) -> list[sa.Row]:
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(sa.select(DeadLetter.source, DeadLetter.message_id, DeadLetter.error)).all())
    finally:
        engine.dispose()


def assert_invariants(url: str, expected: Collection[TaskKey], *, max_runs: int, others_allowed: bool = False,
                      max_attempts: int | None = 0, max_lost: int | None = None) -> LedgerSummary:
    """Check the invariants (module docstring) for the `expected` tasks; returns the counts.

    `others_allowed`: the ledger may hold tasks besides the expected ones (e.g. a model that fails on
    purpose); they are held to every invariant except being done. `max_attempts` / `max_lost` bound the
    counters of the expected tasks (None: not checked); infrastructure faults must count in neither."""
    problems: list[str] = []
    expected_set = {(m, a, b) for m, a, b in expected}
    ledger = read_ledger(url)
    by_window = Counter((row.model, row.window_start, row.window_end) for row in ledger)
    twice = [key for key, count in by_window.items() if count > 1]
    if twice:
        problems.append(f"{len(twice)} (model, window)s have more than one ledger row, e.g. {twice[:3]}")
    rows_of = {(row.model, row.window_start, row.window_end): row for row in ledger}

    missing = [key for key in expected_set if key not in rows_of]
    if missing:
        problems.append(f"{len(missing)} expected tasks are not in the ledger, e.g. {sorted(missing)[:3]}")
    not_done = [rows_of[key] for key in expected_set if key in rows_of and rows_of[key].state != "done"]
    if not_done:
        states = Counter(row.state for row in not_done)
        problems.append(f"{len(not_done)} expected tasks are not done ({dict(states)}), e.g. "
                        + "; ".join(f"{r.model} {r.window_start:%H:%M} {r.state}: {r.error}" for r in not_done[:3]))
    others = [row for row in ledger if (row.model, row.window_start, row.window_end) not in expected_set]
    if others and not others_allowed:
        problems.append(f"{len(others)} unexpected tasks in the ledger, e.g. "
                        + "; ".join(f"{r.model[:40]} {r.window_start} {r.state}" for r in others[:3]))

    infra = [row for row in ledger if row.error and INFRASTRUCTURE.search(row.error)]
    if infra:
        problems.append(f"{len(infra)} tasks carry an infrastructure error, e.g. "
                        + "; ".join(f"{r.model} {r.window_start:%H:%M} {r.state}: {r.error[:300]}" for r in infra[:3]))
    running = [row for row in ledger if row.state == "running"]
    if running:
        problems.append(f"{len(running)} tasks left running, e.g. {[r.task_id for r in running[:3]]}")

    expected_rows_of = {key: expected_rows(key[1], key[2]) for key in expected_set}
    wrong_ledger_rows = [(key, rows_of[key].rows, want) for key, want in expected_rows_of.items()
                         if key in rows_of and rows_of[key].state == "done" and rows_of[key].rows != want]
    if wrong_ledger_rows:
        problems.append(f"{len(wrong_ledger_rows)} done tasks record the wrong row count, e.g. {wrong_ledger_rows[:3]}")

    engine = _engine(url)
    try:
        with engine.connect() as connection:
            stored = _predictions_per_task(connection)
            total = connection.execute(sa.select(sa.func.count()).select_from(Prediction)).scalar_one()
            distinct = connection.execute(sa.select(sa.func.count()).select_from(
                sa.select(Prediction.model, Prediction.output, Prediction.tag, Prediction.ts).distinct().subquery()
            )).scalar_one()
            queue_rows, leased = connection.execute(sa.select(sa.func.count(), sa.func.count(QueuedTask.lease_owner))
                                                    .select_from(QueuedTask)).one()
            letters = connection.execute(sa.select(sa.func.count()).select_from(DeadLetter)).scalar_one()
    finally:
        engine.dispose()

    wrong_stored = [(key, stored.get(key, 0), want) for key, want in expected_rows_of.items()
                    if stored.get(key, 0) != want]
    if wrong_stored:
        problems.append(f"{len(wrong_stored)} expected tasks have the wrong number of stored predictions "
                        f"(key, stored, expected), e.g. {wrong_stored[:3]}")
    want_total = sum(expected_rows_of.values())
    if not others_allowed and total != want_total:
        problems.append(f"{total} prediction rows stored, expected {want_total}")
    if total != distinct:
        problems.append(f"duplicate prediction keys: {total} rows, {distinct} distinct (model, output, tag, ts)")
    if leased:
        problems.append(f"{leased} task_queue rows still leased")
    if queue_rows:
        problems.append(f"{queue_rows} task_queue rows left (every task should be settled)")

    mine = [rows_of[key] for key in expected_set if key in rows_of]
    runs_max = max((row.runs for row in ledger), default=0)
    if runs_max > max_runs:
        looping = sorted(ledger, key=lambda r: -r.runs)[:3]
        problems.append(f"a task ran {runs_max} times (bound {max_runs}): "
                        + "; ".join(f"{r.model} {r.window_start:%H:%M} runs {r.runs} lost {r.lost}" for r in looping))
    attempts = sum(row.attempts for row in mine)
    lost = sum(row.lost for row in mine)
    if max_attempts is not None and any(row.attempts > max_attempts for row in mine):
        problems.append(f"failed attempts counted on expected tasks (bound {max_attempts} each): total {attempts}")
    if max_lost is not None and any(row.lost > max_lost for row in mine):
        problems.append(f"lost runs counted on expected tasks (bound {max_lost} each): total {lost}")

    states = dict(Counter(row.state for row in ledger))
    if problems:
        raise AssertionError("chaos invariants broken:\n- " + "\n- ".join(problems) + f"\nledger states: {states}")
    return LedgerSummary(tasks=len(expected_set), done=sum(1 for row in mine if row.state == "done"),
                         failed=states.get("failed", 0), runs_max=runs_max, lost=lost, attempts=attempts,
                         dead_letters=letters, predictions=total, states=states)


def _predictions_per_task(connection: sa.Connection) -> dict[TaskKey, int]:
    """Stored prediction rows inside each ledger task's window, per (model, window)."""
    t, p = TaskRecord.__table__, Prediction.__table__
    joined = t.join(p, sa.and_(p.c.model == t.c.model, p.c.ts >= t.c.window_start, p.c.ts < t.c.window_end))
    rows = connection.execute(sa.select(t.c.model, t.c.window_start, t.c.window_end, sa.func.count())
                              .select_from(joined).group_by(t.c.model, t.c.window_start, t.c.window_end)).all()
    return {(model, start, end): count for model, start, end, count in rows}
