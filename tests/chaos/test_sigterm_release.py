"""Chaos 5: five SIGTERMs on one slow task.

The model takes 3 s; the executor's shutdown_timeout is 0.5 s, so each SIGTERM releases the task
unfinished (a release counts against nothing) and the executor exits 0. Restarted each time, then
left alone, the task completes: done once, attempts 0, lost 0. On PostgreSQL and SQLite."""

from __future__ import annotations

import signal
import time

import pytest
import sqlalchemy as sa

from latigo.storage.tables import QueuedTask
from tests.chaos.harness import REPORT, Probe, ScenarioResult, backfill_args, chaos_config, task_keys, wait_until
from tests.chaos.invariants import assert_invariants, read_ledger

pytestmark = [pytest.mark.slow, pytest.mark.integration]
SIGTERMS = 5


def test_five_sigterms_release_one_slow_task_which_then_completes(database, procs, tmp_path):
    began = time.monotonic()
    expected = task_keys(["slow"], 1)
    config = chaos_config(tmp_path / "latigo.yaml", database.url, ["slow"], sleep=3.0, concurrency=1,
                          executor={"shutdown_timeout": "500ms"})
    procs.run_ok(config, *backfill_args(1))
    probe = Probe(database.url)
    for round_ in range(1, SIGTERMS + 1):
        executor = procs.start(config, "executor", name=f"sigterm-{round_}")
        wait_until(lambda: probe.running() == 1, 60, "the executor to start the task", procs.tails, every=0.05)
        executor.send(signal.SIGTERM)
        assert executor.wait(20) == 0, executor.tail()
        (row,) = read_ledger(database.url)
        assert (row.state, row.runs, row.attempts, row.lost) == ("queued", round_, 0, 0), row
        leased = probe.scalar(sa.select(sa.func.count(QueuedTask.lease_owner)), patience=5)
        available = probe.scalar(sa.select(sa.func.count()).select_from(QueuedTask), patience=5)
        assert (available, leased) == (1, 0), "the released task is not back on the queue, unleased"

    last = procs.start(config, "executor", name="completes")
    wait_until(lambda: probe.drained(1), 60, "the task to complete", procs.tails)
    assert procs.stop([last]) == [0], last.tail()
    probe.close()

    summary = assert_invariants(database.url, expected, max_runs=SIGTERMS + 1, max_lost=0, max_attempts=0)
    (row,) = read_ledger(database.url)
    assert (row.runs, row.attempts, row.lost) == (SIGTERMS + 1, 0, 0)
    REPORT.add(ScenarioResult(
        "five SIGTERMs on one slow task", database.backend, summary.tasks, summary.done, summary.failed,
        summary.runs_max, summary.lost, summary.attempts, summary.dead_letters,
        f"{SIGTERMS} SIGTERMs (shutdown_timeout 0.5 s, model 3 s)", procs.log_count("database fault while"),
        time.monotonic() - began))

