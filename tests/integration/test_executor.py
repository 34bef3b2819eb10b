"""The executor's per-task pipeline with the real queue, ledger and storage on both databases."""

import logging
import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from latigo.config import ExecutorSettings
from latigo.executor import Executor, Outcome
from latigo.queues.database import DatabaseTaskQueue
from latigo.storage.tables import DeadLetter, Prediction, QueuedTask, TaskRecord
from latigo.types import Task, TimeRange
from tests.support.providers import StaticModels, expected_rows

pytestmark = pytest.mark.integration
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
WINDOW = TimeRange(T0, T0 + timedelta(minutes=30))
OUTPUTS = ["model-output", "total-anomaly-scaled"]


def make_executor(engine, models, max_attempts=3, **kw):
    settings = ExecutorSettings(concurrency=2, max_attempts=max_attempts, retry_base_delay=timedelta(0),
                                retry_max_delay=timedelta(0), poll_timeout=timedelta(seconds=0.1),
                                shutdown_timeout=timedelta(seconds=5))
    queue = DatabaseTaskQueue(engine, DatabaseTaskQueue.Settings(poll_interval=timedelta(seconds=0.05)))
    return Executor(settings, queue, StaticModels(models, **kw), engine, OUTPUTS, name="test-exec")


def ledger(engine, task):
    with engine.connect() as c:
        return c.execute(sa.select(TaskRecord).where(TaskRecord.task_id == task.task_id)).one()


def prediction_count(engine):
    with engine.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(Prediction)).scalar()


def run_one(executor, task):
    executor.queue.put_many([task])
    return executor.handle(executor.queue.get(timeout=1))


def test_a_task_runs_stores_only_configured_outputs_and_is_marked_done(engine):
    executor = make_executor(engine, ["m"])
    task = Task("m", WINDOW)
    assert run_one(executor, task) is Outcome.DONE
    row = ledger(engine, task)
    assert (row.state, row.attempts, row.rows) == ("done", 1, expected_rows(WINDOW.start, WINDOW.end))
    assert prediction_count(engine) == expected_rows(WINDOW.start, WINDOW.end)  # model-input not stored
    assert executor.queue.size() == 0


def test_a_finished_task_enqueued_again_is_skipped_and_rewrites_nothing(engine):
    executor = make_executor(engine, ["m"])
    task = Task("m", WINDOW)
    run_one(executor, task)
    executor.execution.models.clear()  # a second run would now fail: proves it is not run at all
    assert run_one(executor, task) is Outcome.SKIPPED
    assert ledger(engine, task).state == "done"
    assert executor.execution.calls[("m", WINDOW.start)] == 1


def test_transient_failures_are_retried_and_the_attempts_recorded(engine):
    executor = make_executor(engine, ["transient-2-m"], max_attempts=5)
    task = Task("transient-2-m", WINDOW)
    assert run_one(executor, task) is Outcome.DONE
    row = ledger(engine, task)
    assert (row.state, row.attempts) == ("done", 3)


def test_transient_failures_past_max_attempts_fail_with_the_reason(engine):
    executor = make_executor(engine, ["transient-9-m"], max_attempts=3)
    task = Task("transient-9-m", WINDOW)
    assert run_one(executor, task) is Outcome.FAILED
    row = ledger(engine, task)
    assert (row.state, row.attempts) == ("failed", 3)
    assert row.error.startswith("transient: simulated outage 3")
    assert executor.queue.size() == 0  # failed tasks are settled, not left to loop


def test_a_permanent_failure_is_not_retried(engine):
    executor = make_executor(engine, ["broken-m"], max_attempts=5)
    task = Task("broken-m", WINDOW)
    assert run_one(executor, task) is Outcome.FAILED
    row = ledger(engine, task)
    assert (row.state, row.attempts) == ("failed", 1)
    assert row.error == "permanent: simulated bad request: Unexpected features"
    assert executor.execution.calls[("broken-m", WINDOW.start)] == 1


def test_an_unknown_model_fails_with_its_reason(engine):
    executor = make_executor(engine, ["m"])
    task = Task("ghost", WINDOW)
    assert run_one(executor, task) is Outcome.FAILED
    assert ledger(engine, task).error == "unknown_model: unknown model 'ghost'"


def test_a_provider_bug_fails_the_task_and_the_worker_survives(engine, caplog):
    executor = make_executor(engine, ["crash-m"])
    task = Task("crash-m", WINDOW)
    with caplog.at_level(logging.ERROR):
        assert run_one(executor, task) is Outcome.FAILED
    assert ledger(engine, task).error.startswith("internal: KeyError")


def test_an_undecodable_message_is_dead_lettered_and_the_executor_keeps_running(engine):
    executor = make_executor(engine, ["m"])
    with engine.begin() as c:
        c.execute(sa.insert(QueuedTask), {"task_id": "junk", "body": "\x01garbage", "deliveries": 0,
                                          "available_at": T0, "enqueued_at": T0})
    executor.queue.put_many([Task("m", WINDOW)])
    stats = executor.run(exit_when_idle=0.5)
    assert (stats.dead_letter, stats.done) == (1, 1)
    with engine.connect() as c:
        letter = c.execute(sa.select(DeadLetter)).one()
    assert letter.body == b"\x01garbage" and "not JSON" in letter.error
    assert executor.queue.size() == 0


def test_a_redelivery_after_too_many_dead_attempts_is_failed_not_looped(engine):
    executor = make_executor(engine, ["m"], max_attempts=2)
    task = Task("m", WINDOW)
    executor.ledger.mark_running(task, "died-1")
    executor.ledger.mark_running(task, "died-2")
    assert run_one(executor, task) is Outcome.FAILED
    assert "gave up after 2 attempts" in ledger(engine, task).error


def test_stop_releases_tasks_that_have_not_finished(engine):
    executor = make_executor(engine, ["transient-99-m"], max_attempts=50)
    executor.settings.retry_base_delay = timedelta(seconds=30)
    executor.settings.retry_max_delay = timedelta(seconds=30)
    executor.queue.put_many([Task("transient-99-m", WINDOW)])
    runner = threading.Thread(target=executor.run)
    runner.start()
    while not executor.execution.calls:
        threading.Event().wait(0.05)
    executor.stop()
    runner.join(10)
    assert not runner.is_alive()
    assert executor.stats.released == 1
    with engine.connect() as c:
        leased = c.execute(sa.select(QueuedTask.lease_owner)).scalar_one()
    assert leased is None  # handed back, visible to the next executor at once
    assert ledger(engine, Task("transient-99-m", WINDOW)).state == "queued"
