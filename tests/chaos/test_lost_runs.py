"""Chaos 2b: a PostgreSQL restart must not count as runs lost by a dead executor.

While the server is down, a worker that fails to store its task cannot release it either ("could not
release it yet ... it comes back when its lease expires"); the ledger still says `running`, so the next
start counts a lost run, as if the executor had died. Lost runs are capped by executor.max_lost_runs
(here 1): past it the task is failed "abandoned", a window lost to an infrastructure fault."""

from __future__ import annotations

import time

import pytest

from tests.chaos.harness import REPORT, Probe, ScenarioResult, backfill_args, chaos_config, task_keys, wait_until
from tests.chaos.invariants import assert_invariants

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_a_restart_counts_no_lost_runs_and_abandons_no_task(private_pg, private_pg_database, procs, tmp_path):
    began = time.monotonic()
    url = private_pg_database.url
    models, windows = [f"lost-{i}" for i in range(4)], 60  # 240 tasks
    expected = task_keys(models, windows)
    config = chaos_config(tmp_path / "latigo.yaml", url, models, sleep=0.05, concurrency=3, lease="3s",
                          executor={"max_lost_runs": 1})
    procs.run_ok(config, *backfill_args(windows))
    probe = Probe(url)
    executors = [procs.start(config, "executor", name=f"executor-{i}") for i in range(2)]
    wait_until(lambda: probe.done() >= 30, 60, "the executors to get going", procs.tails)
    private_pg.restart(down_for=2.0)
    wait_until(lambda: probe.drained(len(expected)), 120, "the backlog to drain after the restart",
               lambda: f"{probe.snapshot()}\n{procs.tails()}")
    assert procs.stop(executors) == [0, 0], procs.tails()
    probe.close()

    unreleased = procs.log_count("could not release it yet")
    summary = assert_invariants(url, expected, max_runs=3, max_lost=0)
    REPORT.add(ScenarioResult(
        "restart counts no lost run", private_pg_database.backend, summary.tasks, summary.done, summary.failed,
        summary.runs_max, summary.lost, summary.attempts, summary.dead_letters, "1 restart (down 2 s)",
        procs.log_count("database fault while"), time.monotonic() - began,
        {"releases that failed": unreleased}))
