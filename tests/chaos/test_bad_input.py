"""Chaos 6a: input latigo cannot take, among input it can.

- Poison messages on the database queue: a body that is not JSON, and a well-formed task whose model
  name (300 characters) the ledger cannot hold. Each goes to `dead_letters` exactly once, and two
  executors keep draining the good tasks around them.
- A model provider listing 20 models plus one with a 300-character name: `latigo backfill` and the
  scheduler loop schedule the 20, reject the one with a clear log line, and nothing loops.

On PostgreSQL and SQLite."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from latigo.config import DatabaseSettings
from latigo.storage.db import create_engine_for
from latigo.storage.tables import QueuedTask, ScheduleState
from latigo.types import Task, TimeRange
from tests.chaos.harness import (
    INTERVAL,
    REPORT,
    START,
    Probe,
    ScenarioResult,
    backfill_args,
    chaos_config,
    task_keys,
    wait_until,
)
from tests.chaos.invariants import assert_invariants, dead_letters, read_ledger

pytestmark = [pytest.mark.slow, pytest.mark.integration]
LONG_NAME = "long-" + "x" * 295


def test_poison_messages_are_dead_lettered_once_and_the_executors_keep_working(database, procs, tmp_path):
    began = time.monotonic()
    models, windows = [f"good-{i}" for i in range(3)], 10  # 30 good tasks
    expected = task_keys(models, windows)
    config = chaos_config(tmp_path / "latigo.yaml", database.url, models, concurrency=2)
    procs.run_ok(config, *backfill_args(windows))
    unrecordable = Task(LONG_NAME, TimeRange(START, START + INTERVAL))
    poison = {"poison-not-json": '{"schema": 1, "task_id": "poison-not-js',
              unrecordable.task_id: unrecordable.to_json()}
    engine = create_engine_for(DatabaseSettings(url=database.url))
    first = datetime.now(timezone.utc) - timedelta(hours=1)  # ahead of the good tasks
    with engine.begin() as connection:
        connection.execute(sa.insert(QueuedTask), [
            {"task_id": task_id, "body": body, "available_at": first, "enqueued_at": first, "deliveries": 0}
            for task_id, body in poison.items()])
    engine.dispose()

    probe = Probe(database.url)
    executors = [procs.start(config, "executor", name=f"executor-{i}") for i in range(2)]
    wait_until(lambda: probe.drained(len(expected)), 60, "the good tasks to drain around the poison",
               lambda: f"{probe.snapshot()}\n{procs.tails()}")
    assert procs.stop(executors) == [0, 0], procs.tails()
    probe.close()

    letters = dead_letters(database.url)
    assert sorted(letter.message_id for letter in letters) == sorted(poison), letters
    errors = {letter.message_id: letter.error for letter in letters}
    assert "not JSON" in errors["poison-not-json"], errors
    assert "300 characters" in errors[unrecordable.task_id], errors
    # SQLite stores a name of any length: there the unrecordable task may reach the ledger, failed with
    # the dead-letter reason; PostgreSQL's varchar(255) refuses it. No other task may be there.
    others = [row for row in read_ledger(database.url) if row.model not in models]
    assert all(row.model == LONG_NAME and row.state == "failed" and "dead_letter" in row.error for row in others), \
        others
    if database.backend == "postgresql":
        assert others == []
    summary = assert_invariants(database.url, expected, max_runs=1, others_allowed=True)
    REPORT.add(ScenarioResult(
        "poison messages", database.backend, summary.tasks, summary.done, summary.failed, summary.runs_max,
        summary.lost, summary.attempts, summary.dead_letters,
        "2 poison messages (not JSON; a 300-character model name)", procs.log_count("database fault while"),
        time.monotonic() - began, {"dead-letter log lines": procs.log_count("message dead-lettered")}))


def test_a_300_character_model_name_is_rejected_alone_by_backfill_and_the_scheduler(database, procs, tmp_path):
    began = time.monotonic()
    models, windows = [f"named-{i:02d}" for i in range(20)], 3
    config = chaos_config(tmp_path / "latigo.yaml", database.url, [*models, LONG_NAME], concurrency=4,
                          scheduler={"run_at_once": True})
    rejection = f"model '{LONG_NAME[:80]}' is not scheduled: the name is 300 characters"

    output = procs.run_ok(config, *backfill_args(windows), name="backfill")
    assert output.count(rejection) == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert len(read_ledger(database.url)) == len(models) * windows

    probe = Probe(database.url)
    scheduler = procs.start(config, "scheduler")
    wait_until(lambda: len(read_ledger(database.url)) >= len(models) * (windows + 1), 60, "the scheduler's cycle",
               procs.tails)
    time.sleep(2)  # two check intervals (1 s): the loop must not repeat the rejection or the cycle
    assert len(read_ledger(database.url)) == len(models) * (windows + 1)
    assert procs.stop([scheduler]) == [0], scheduler.tail()
    log = scheduler.output()
    assert log.count(rejection) == 1, log[-3000:]
    assert "Traceback" not in log and "cycle failed" not in log, log[-3000:]

    engine = create_engine_for(DatabaseSettings(url=database.url))
    with engine.connect() as connection:
        ends = dict(connection.execute(sa.select(ScheduleState.model, ScheduleState.last_window_end)).all())
    engine.dispose()
    assert set(ends) == set(models)
    expected = task_keys(models, windows) + [(model, end - INTERVAL, end) for model, end in ends.items()]

    executors = [procs.start(config, "executor", name=f"executor-{i}") for i in range(2)]
    wait_until(lambda: probe.drained(len(expected)), 60, "the backlog to drain",
               lambda: f"{probe.snapshot()}\n{procs.tails()}")
    assert procs.stop(executors) == [0, 0], procs.tails()
    probe.close()
    summary = assert_invariants(database.url, expected, max_runs=1)
    REPORT.add(ScenarioResult(
        "300-character model name among 20", database.backend, summary.tasks, summary.done, summary.failed,
        summary.runs_max, summary.lost, summary.attempts, summary.dead_letters,
        "1 model name of 300 characters listed by the provider", procs.log_count("database fault while"),
        time.monotonic() - began, {"rejection log lines (backfill, scheduler)": 2}))
