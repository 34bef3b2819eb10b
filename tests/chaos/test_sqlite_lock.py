"""Chaos 4: SQLite's write lock held by another connection (`BEGIN IMMEDIATE`) for 35 s, longer than
latigo's busy timeout (latigo.storage.db.SQLITE_BUSY_TIMEOUT_MS, 30 s), in the middle of a drain.

Every write of the executors waits, then fails with "database is locked": an infrastructure fault, so
the task is released (or left to its lease), never failed, and the drain completes once the lock is gone."""

from __future__ import annotations

import time

import pytest

from latigo.storage.db import SQLITE_BUSY_TIMEOUT_MS
from tests.chaos.harness import (
    REPORT,
    Probe,
    ScenarioResult,
    SqliteLockHolder,
    backfill_args,
    chaos_config,
    task_keys,
    wait_until,
)
from tests.chaos.invariants import assert_invariants

pytestmark = [pytest.mark.slow, pytest.mark.integration]
HOLD = SQLITE_BUSY_TIMEOUT_MS / 1000 + 5


def test_sqlite_write_lock_held_past_the_busy_timeout_during_a_drain(sqlite_database, procs, tmp_path):
    began = time.monotonic()
    models, windows = [f"lock-{i}" for i in range(4)], 40  # 160 tasks of 0.05 s
    expected = task_keys(models, windows)
    # The lease outlasts the lock: a task whose release is refused while the lock is held comes back by
    # its lease; the workers' own writes are what this scenario is about.
    config = chaos_config(tmp_path / "latigo.yaml", sqlite_database.url, models, sleep=0.05, concurrency=2,
                          lease="10s")
    procs.run_ok(config, *backfill_args(windows))
    probe = Probe(sqlite_database.url)
    executors = [procs.start(config, "executor", name=f"executor-{i}") for i in range(2)]
    wait_until(lambda: probe.done() >= 20, 60, "the executors to get going", procs.tails)

    holder = SqliteLockHolder(sqlite_database.path, HOLD)
    holder.start()
    assert holder.acquired.wait(60), "could not take the write lock"
    assert not holder.error, holder.error
    done_under_lock = probe.done()  # readers are not blocked (WAL)
    holder.join(HOLD + 30)
    assert not holder.error, holder.error
    assert done_under_lock < len(expected), "calibration: the drain ended before the lock was taken"
    wait_until(lambda: probe.drained(len(expected)), 180, "the backlog to drain after the lock",
               lambda: f"{probe.snapshot()}\n{procs.tails()}")
    assert procs.stop(executors) == [0, 0], procs.tails()
    probe.close()

    summary = assert_invariants(sqlite_database.url, expected, max_runs=3, max_lost=None)
    locked = procs.log_count("database is locked")
    assert locked >= 1, "no executor write met the lock: it was not held during the drain"
    REPORT.add(ScenarioResult(
        "SQLite write lock held past the busy timeout", sqlite_database.backend, summary.tasks, summary.done,
        summary.failed, summary.runs_max, summary.lost, summary.attempts, summary.dead_letters,
        f"BEGIN IMMEDIATE held {holder.held_for:.0f} s (busy timeout {SQLITE_BUSY_TIMEOUT_MS / 1000:.0f} s)",
        procs.log_count("database fault while"), time.monotonic() - began,
        {"done when the lock was taken": done_under_lock, "'database is locked' log lines": locked}))
