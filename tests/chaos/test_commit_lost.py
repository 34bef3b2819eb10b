"""Chaos 1b: the connection lost at the very moment of COMMIT of a task's finish transaction.

A deferred constraint trigger on `task_queue` (it fires inside COMMIT, after every statement of the
transaction has run) terminates its own backend for the first three acks: the executor's COMMIT fails
with "server closed the connection unexpectedly", nothing of the transaction is stored, and the task
must be released for redelivery at once, like any other database fault, not wait for its lease (60 s)."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from latigo.config import DatabaseSettings
from latigo.storage.db import create_engine_for
from tests.chaos.harness import REPORT, Probe, ScenarioResult, backfill_args, chaos_config, task_keys, wait_until
from tests.chaos.invariants import assert_invariants

pytestmark = [pytest.mark.slow, pytest.mark.integration]
KILLS = 3

KILL_AT_COMMIT = [
    "CREATE SEQUENCE chaos_commit_kills",
    f"""CREATE FUNCTION chaos_kill_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF nextval('chaos_commit_kills') <= {KILLS} THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
      RETURN NULL;
    END $$""",
    "CREATE CONSTRAINT TRIGGER chaos_kill_at_commit AFTER DELETE ON task_queue DEFERRABLE INITIALLY DEFERRED "
    "FOR EACH ROW EXECUTE FUNCTION chaos_kill_at_commit()",
]


def test_a_connection_lost_at_commit_releases_the_task_for_redelivery_at_once(pg_database, procs, tmp_path):
    began = time.monotonic()
    models, windows = ["commit-a", "commit-b"], 10  # 20 tasks
    expected = task_keys(models, windows)
    config = chaos_config(tmp_path / "latigo.yaml", pg_database.url, models, concurrency=2, lease="60s")
    procs.run_ok(config, *backfill_args(windows))
    engine = create_engine_for(DatabaseSettings(url=pg_database.url))
    with engine.begin() as connection:
        for statement in KILL_AT_COMMIT:
            connection.exec_driver_sql(statement)

    probe = Probe(pg_database.url)
    executor = procs.start(config, "executor")
    wait_until(lambda: probe.drained(len(expected)), 20,
               "every task to be done well within its 60 s lease (3 commits were lost)",
               lambda: f"{probe.snapshot()}\n{procs.tails()}")
    assert procs.stop([executor]) == [0], executor.tail()
    probe.close()
    with engine.connect() as connection:
        fired = connection.execute(sa.text("SELECT last_value FROM chaos_commit_kills")).scalar()
    engine.dispose()
    assert fired >= KILLS

    summary = assert_invariants(pg_database.url, expected, max_runs=2, max_lost=0)
    REPORT.add(ScenarioResult(
        "connection lost at COMMIT", pg_database.backend, summary.tasks, summary.done, summary.failed,
        summary.runs_max, summary.lost, summary.attempts, summary.dead_letters,
        f"{KILLS} backends terminated inside COMMIT of a finish", procs.log_count("database fault while"),
        time.monotonic() - began))
