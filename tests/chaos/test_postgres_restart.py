"""Chaos 2: the PostgreSQL server restarted (`pg_ctl restart -m fast`, down a second or more) while two
executors drain a backlog, and while the scheduler loop runs a long cycle.

It runs on a private cluster (tests/support/postgres_cluster.py), never the machine's shared server.
Executors release what they hold, back off and carry on when the server is back; the scheduler retries
its failed cycle within seconds and the schedule ends complete, without a duplicate."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from latigo.config import DatabaseSettings
from latigo.storage.db import create_engine_for
from latigo.storage.tables import ScheduleState
from tests.chaos.harness import (
    INTERVAL,
    REPORT,
    Probe,
    ScenarioResult,
    backfill_args,
    chaos_config,
    task_keys,
    wait_until,
)
from tests.chaos.invariants import assert_invariants, read_ledger

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_postgres_restarted_twice_during_a_drain(private_pg, private_pg_database, procs, tmp_path):
    began = time.monotonic()
    url = private_pg_database.url
    models, windows = [f"restart-{i}" for i in range(6)], 80  # 480 tasks
    expected = task_keys(models, windows)
    # A task whose release fails while the server is down is left to its lease: keep it short.
    config = chaos_config(tmp_path / "latigo.yaml", url, models, sleep=0.05, concurrency=3, lease="5s")
    procs.run_ok(config, *backfill_args(windows))
    probe = Probe(url)
    executors = [procs.start(config, "executor", name=f"executor-{i}") for i in range(2)]
    restarts, done_at_restart = 0, []
    for _ in range(2):
        floor = probe.done() + 40
        wait_until(lambda floor=floor: probe.done() >= floor, 90, "the executors to make progress",
                   lambda: f"{probe.snapshot()}\n{procs.tails()}")
        done_at_restart.append(probe.done())
        private_pg.restart(down_for=1.5)
        restarts += 1
    assert done_at_restart[-1] < len(expected), "calibration: the drain ended before the restarts"
    wait_until(lambda: probe.drained(len(expected)), 180, "the backlog to drain after the restarts",
               lambda: f"{probe.snapshot()}\n{procs.tails()}")
    assert procs.stop(executors) == [0, 0], procs.tails()
    probe.close()

    summary = assert_invariants(url, expected, max_runs=4, max_lost=None)
    faults = procs.log_count("database fault while")
    assert faults >= 1, "the restarts did not reach the executors"
    REPORT.add(ScenarioResult(
        "PostgreSQL restarted during a drain", private_pg_database.backend, summary.tasks, summary.done,
        summary.failed, summary.runs_max, summary.lost, summary.attempts, summary.dead_letters,
        f"{restarts} restarts (down 1.5 s each)", faults, time.monotonic() - began,
        {"done at each restart": done_at_restart,
         "releases that failed (left to the lease)": procs.log_count("could not release it yet")}))


def _latest_window_end(now: datetime) -> datetime:
    """The scheduler's newest window end on the 10-minute grid with no delay (anchor 00:00 UTC)."""
    step = INTERVAL.total_seconds()
    return datetime.fromtimestamp(now.timestamp() // step * step, timezone.utc)


def test_postgres_restarted_during_a_scheduling_cycle(private_pg, private_pg_database, procs, tmp_path):
    began = time.monotonic()
    url = private_pg_database.url
    models, behind = [f"cycle-{i:02d}" for i in range(30)], 20  # 600 due windows, in batches of 3
    config = chaos_config(tmp_path / "latigo.yaml", url, models, concurrency=4,
                          scheduler={"batch_size": 3, "run_at_once": True})
    # Each model's last scheduled window lies 20 windows back: the first cycle catches up on all of them.
    first = _latest_window_end(datetime.now(timezone.utc)) - behind * INTERVAL
    engine = create_engine_for(DatabaseSettings(url=url))
    with engine.begin() as connection:
        connection.execute(sa.insert(ScheduleState), [
            {"project": "default", "model": m, "last_window_end": first, "updated_at": datetime.now(timezone.utc)}
            for m in models])
    engine.dispose()

    probe = Probe(url)
    scheduler = procs.start(config, "scheduler")
    wait_until(lambda: (probe.snapshot() or {}).get("queued", 0) > 0, 60, "the cycle to start", procs.tails,
               every=0.02)
    in_ledger_at_restart = probe.snapshot(patience=5)["queued"]
    private_pg.restart(down_for=1.0)
    wait_until(lambda: (probe.snapshot() or {}).get("queued", 0) >= len(models) * behind, 60,
               "the scheduler to complete its cycle after the restart", procs.tails)
    assert procs.stop([scheduler]) == [0], scheduler.tail()
    log = scheduler.output()
    failed_cycles = log.count("scheduling cycle failed")
    assert failed_cycles >= 1, f"calibration: the restart did not hit the cycle ({in_ledger_at_restart} tasks " \
                               f"were in the ledger at the restart)\n{scheduler.tail()}"
    assert "Traceback" not in log, log[-3000:]

    # The expected tasks: each model's windows from where it stood to where the schedule state says it is
    # now (one more per model if a 10-minute tick passed meanwhile).
    engine = create_engine_for(DatabaseSettings(url=url))
    with engine.connect() as connection:
        ends = dict(connection.execute(sa.select(ScheduleState.model, ScheduleState.last_window_end)).all())
    engine.dispose()
    assert set(ends) == set(models)
    assert min(ends.values()) >= first + behind * INTERVAL
    expected = [key for model in models
                for key in task_keys([model], int((ends[model] - first) / INTERVAL), start=first)]
    assert len(read_ledger(url)) == len(expected)

    executors = [procs.start(config, "executor", name=f"executor-{i}") for i in range(2)]
    wait_until(lambda: probe.drained(len(expected)), 180, "the backlog to drain",
               lambda: f"{probe.snapshot()}\n{procs.tails()}")
    assert procs.stop(executors) == [0, 0], procs.tails()
    probe.close()
    summary = assert_invariants(url, expected, max_runs=1)
    REPORT.add(ScenarioResult(
        "PostgreSQL restarted during a scheduling cycle", private_pg_database.backend, summary.tasks,
        summary.done, summary.failed, summary.runs_max, summary.lost, summary.attempts, summary.dead_letters,
        "1 restart (down 1 s)", procs.log_count("database fault while"), time.monotonic() - began,
        {"tasks in the ledger at the restart": in_ledger_at_restart, "failed cycles retried": failed_cycles}))
