"""Chaos 1: every connection of latigo's database terminated by the server (`pg_terminate_backend`),
again and again, while two executor processes drain a backlog and while `latigo backfill` schedules one.

A killed connection is an infrastructure fault: the task in hand is released and redelivered, never
failed; a backfill that dies half-way is simply run again and completes the schedule without a duplicate."""

from __future__ import annotations

import time

import pytest

from tests.chaos.harness import (
    REPORT,
    ConnectionKiller,
    Probe,
    ScenarioResult,
    backfill_args,
    chaos_config,
    task_keys,
    wait_until,
)
from tests.chaos.invariants import assert_invariants, read_ledger

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_connections_killed_repeatedly_during_a_drain(pg_database, procs, tmp_path):
    began = time.monotonic()
    models, windows = [f"kill-{i}" for i in range(6)], 80  # 480 tasks
    expected = task_keys(models, windows)
    # A lease of 10 s bounds how long a task whose release did not take effect waits (see the report).
    # 0.1 s per model call: the drain (about 8 s at 2 x 3 calls at once) outlasts the 8 kill rounds.
    config = chaos_config(tmp_path / "latigo.yaml", pg_database.url, models, sleep=0.1, concurrency=3,
                          lease="10s")
    procs.run_ok(config, *backfill_args(windows))
    probe = Probe(pg_database.url)
    executors = [procs.start(config, "executor", name=f"executor-{i}") for i in range(2)]
    wait_until(lambda: probe.done() >= 30, 60, "the executors to get going", procs.tails)

    killer = ConnectionKiller(pg_database.admin_url, pg_database.name, period=0.6, rounds=8)
    killer.start()
    killer.join(30)
    done_after_kills = probe.done()
    assert done_after_kills < len(expected), "calibration: the drain ended before the connection kills did"
    wait_until(lambda: probe.drained(len(expected)), 180, "the backlog to drain after the kills",
               lambda: f"{probe.snapshot()}\n{procs.tails()}")
    assert procs.stop(executors) == [0, 0], procs.tails()
    probe.close()

    summary = assert_invariants(pg_database.url, expected, max_runs=6, max_lost=None)
    assert killer.hits >= 6, f"only {killer.hits} kill rounds hit a connection: {killer.describe()}"
    assert not killer.errors, killer.errors
    REPORT.add(ScenarioResult(
        "connections killed during a drain", pg_database.backend, summary.tasks, summary.done, summary.failed,
        summary.runs_max, summary.lost, summary.attempts, summary.dead_letters, killer.describe(),
        procs.log_count("database fault while"), time.monotonic() - began,
        {"done when the kills stopped": done_after_kills}))


def test_connections_killed_while_backfill_schedules_then_a_rerun_completes_it(pg_database, procs, tmp_path):
    began = time.monotonic()
    models, windows = [f"fill-{i:02d}" for i in range(12)], 50  # 600 tasks in batches of 10
    expected = task_keys(models, windows)
    config = chaos_config(tmp_path / "latigo.yaml", pg_database.url, models, concurrency=4,
                          scheduler={"batch_size": 10})

    killer = ConnectionKiller(pg_database.admin_url, pg_database.name, period=0.5)
    killer.start()
    codes, tracebacks = [], 0
    for _ in range(30):  # until 6 kill rounds have hit a backfill's connection (a hit usually ends the run;
        # how many runs that takes depends on how much of a run is the process starting: 12 were once too few)
        code, output = procs.run(config, *backfill_args(windows), name="backfill-under-kills", timeout=120)
        codes.append(code)
        tracebacks += "Traceback" in output
        if killer.hits >= 6:
            break
    killer.stop()
    assert killer.hits >= 6, f"calibration: {killer.describe()} over {len(codes)} backfill runs"
    assert not killer.errors, killer.errors
    half_done = len(read_ledger(pg_database.url))

    procs.run_ok(config, *backfill_args(windows), name="backfill-rerun")
    ledger = read_ledger(pg_database.url)
    assert len(ledger) == len(expected) and {row.state for row in ledger} == {"queued"}
    assert {(row.model, row.window_start, row.window_end) for row in ledger} == set(expected)
    probe = Probe(pg_database.url)
    assert probe.snapshot()["queue_rows"] == len(expected)  # one message per task, none twice

    executors = [procs.start(config, "executor", name=f"executor-{i}") for i in range(2)]
    wait_until(lambda: probe.drained(len(expected)), 180, "the backlog to drain",
               lambda: f"{probe.snapshot()}\n{procs.tails()}")
    assert procs.stop(executors) == [0, 0], procs.tails()
    probe.close()
    summary = assert_invariants(pg_database.url, expected, max_runs=1)
    REPORT.add(ScenarioResult(
        "connections killed during backfill", pg_database.backend, summary.tasks, summary.done, summary.failed,
        summary.runs_max, summary.lost, summary.attempts, summary.dead_letters, killer.describe(),
        procs.log_count("database fault while"), time.monotonic() - began,
        {"backfill runs under kills": len(codes), "of them failed": sum(c != 0 for c in codes),
         "with a traceback": tracebacks, "tasks scheduled before the re-run": half_done}))
