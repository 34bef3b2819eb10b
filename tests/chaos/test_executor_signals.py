"""Chaos 3: executors that stop answering or die.

- An executor SIGSTOPped with tasks in hand, for twice its lease (3 s): another executor takes the
  tasks over when the leases run out; the frozen one, resumed with SIGCONT, finishes what it held
  without storing anything twice or overwriting a later result.
- kill -9 in a loop: an executor is started, works for about 1.2 s and is SIGKILLed, five times; a
  survivor then drains everything, including the tasks the dead ones held (back when their leases expire).

On PostgreSQL and SQLite."""

from __future__ import annotations

import signal
import socket
import time

import pytest

from latigo.storage.tables import TaskRecord
from tests.chaos.harness import REPORT, Probe, ScenarioResult, backfill_args, chaos_config, task_keys, wait_until
from tests.chaos.invariants import assert_invariants

pytestmark = [pytest.mark.slow, pytest.mark.integration]
LEASE = 3.0


def test_executor_sigstopped_past_its_lease_then_resumed(database, procs, tmp_path):
    began = time.monotonic()
    # A short backlog: the other executor takes the oldest messages first, and the frozen one's come
    # back (at claim + lease) behind them.
    models, windows = [f"stop-{i}" for i in range(3)], 4  # 12 tasks of 0.5 s
    expected = task_keys(models, windows)
    config = chaos_config(tmp_path / "latigo.yaml", database.url, models, sleep=0.5, concurrency=2,
                          lease=f"{LEASE:.0f}s")
    procs.run_ok(config, *backfill_args(windows))
    probe = Probe(database.url)
    frozen = procs.start(config, "executor", name="frozen")
    name = f"{socket.gethostname()}:{frozen.pid}"
    # Frozen once every worker holds a task (2 model slots + 1 spare): between claims a worker may be
    # inside a write transaction, and on SQLite a frozen process holding the write lock stops everyone
    # (that is SQLite's single writer, not this scenario). Then the claims are committed and the model
    # calls (0.5 s) hold no transaction.
    wait_until(lambda: probe.count(TaskRecord.state == "running", TaskRecord.executor == name) >= 3, 60,
               "the executor to start tasks", procs.tails, every=0.05)
    frozen.send(signal.SIGSTOP)
    stopped_at = time.monotonic()
    held = probe.count(TaskRecord.state == "running", TaskRecord.executor == name)
    other = procs.start(config, "executor", name="other")
    time.sleep(2 * LEASE)
    wait_until(lambda: probe.count(TaskRecord.executor != name, TaskRecord.lost > 0) >= 1, 20,
               f"the other executor to take over the frozen one's {held} tasks", procs.tails)
    taken_over = probe.count(TaskRecord.executor != name, TaskRecord.lost > 0)
    stopped_for = time.monotonic() - stopped_at
    frozen.send(signal.SIGCONT)
    wait_until(lambda: probe.drained(len(expected)), 120, "the backlog to drain",
               lambda: f"{probe.snapshot()}\n{procs.tails()}")
    assert procs.stop([frozen, other]) == [0, 0], procs.tails()
    probe.close()

    summary = assert_invariants(database.url, expected, max_runs=3, max_lost=2)
    REPORT.add(ScenarioResult(
        "executor SIGSTOPped past its lease", database.backend, summary.tasks, summary.done, summary.failed,
        summary.runs_max, summary.lost, summary.attempts, summary.dead_letters,
        f"SIGSTOP for {stopped_for:.1f} s (lease {LEASE:.0f} s), SIGCONT", procs.log_count("database fault while"),
        time.monotonic() - began,
        {"tasks held when stopped": held, "taken over while stopped": taken_over,
         "settled after losing the lease": frozen.count("lease was lost before it was settled")}))


def test_executor_sigkilled_five_times_in_a_loop_then_a_survivor_drains_everything(database, procs, tmp_path):
    began = time.monotonic()
    models, windows = [f"kill9-{i}" for i in range(5)], 20  # 100 tasks of 0.4 s
    expected = task_keys(models, windows)
    config = chaos_config(tmp_path / "latigo.yaml", database.url, models, sleep=0.4, concurrency=4,
                          lease=f"{LEASE:.0f}s")
    procs.run_ok(config, *backfill_args(windows))
    probe = Probe(database.url)
    kills, held_at_kill = 0, []
    for round_ in range(5):
        victim = procs.start(config, "executor", name=f"victim-{round_}")
        name = f"{socket.gethostname()}:{victim.pid}"
        wait_until(lambda name=name: probe.count(TaskRecord.state == "running", TaskRecord.executor == name) >= 1,
                   60, "the executor to start tasks", procs.tails, every=0.05)
        time.sleep(1.2)
        held_at_kill.append(probe.count(TaskRecord.state == "running", TaskRecord.executor == name))
        victim.send(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL
        kills += 1
    done_before_survivor = probe.done()
    assert done_before_survivor < len(expected), "calibration: the victims finished everything"
    survivor = procs.start(config, "executor", name="survivor")
    wait_until(lambda: probe.drained(len(expected)), 120, "the survivor to drain everything",
               lambda: f"{probe.snapshot()}\n{procs.tails()}")
    assert procs.stop([survivor]) == [0], survivor.tail()
    probe.close()

    summary = assert_invariants(database.url, expected, max_runs=4, max_lost=3)
    assert summary.lost >= 1, "no run was lost: the kills hit nothing"
    REPORT.add(ScenarioResult(
        "kill -9 in a loop", database.backend, summary.tasks, summary.done, summary.failed, summary.runs_max,
        summary.lost, summary.attempts, summary.dead_letters, f"{kills} SIGKILLs after ~1.2 s of work each",
        procs.log_count("database fault while"), time.monotonic() - began,
        {"running at each kill": held_at_kill, "done before the survivor": done_before_survivor}))
