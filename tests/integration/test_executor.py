"""The executor's per-task pipeline with the real queue, lifecycle and storage on both databases."""

import logging
import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from latigo.executor import Executor, Outcome
from latigo.lifecycle import TaskLifecycle
from latigo.queues.database import DatabaseTaskQueue
from latigo.settings import ExecutorSettings
from latigo.storage.tables import DeadLetter, Prediction, QueuedTask, TaskRecord
from latigo.types import Task, TimeRange
from tests.support.providers import StaticModels, expected_rows
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
WINDOW = TimeRange(T0, T0 + timedelta(minutes=30))
OUTPUTS = ["model-output", "total-anomaly-scaled"]


def make_executor(engine, models, max_attempts=3, **kw):
    settings = ExecutorSettings(concurrency=2, max_attempts=max_attempts, retry_base_delay=timedelta(0),
                                retry_max_delay=timedelta(0), poll_timeout=timedelta(seconds=0.1),
                                shutdown_timeout=timedelta(seconds=5))
    lifecycle = TaskLifecycle(engine)
    queue = DatabaseTaskQueue(engine, DatabaseTaskQueue.Settings(poll_interval=timedelta(seconds=0.05)),
                              lifecycle=lifecycle)
    return Executor(settings, queue, StaticModels(models, **kw), lifecycle, OUTPUTS, name="test-exec")


def enqueue(executor, *tasks):
    """As the scheduler does: ledger rows and queue rows in one transaction."""
    with executor.lifecycle.transaction() as connection:
        executor.queue.put_many(executor.lifecycle.enqueue(connection, tasks).to_send, connection)


def ledger(engine, task):
    with engine.connect() as c:
        return c.execute(sa.select(TaskRecord).where(TaskRecord.task_id == task.task_id)).one()


def prediction_count(engine):
    with engine.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(Prediction)).scalar()


def run_until_settled(executor, task, limit=20):
    """Take deliveries of `task` until one is settled for good (retries come back through the queue)."""
    outcomes = []
    for _ in range(limit):
        delivery = executor.queue.get(timeout=2)
        assert delivery is not None, f"no delivery after {outcomes}"
        outcomes.append(executor.handle(delivery))
        if outcomes[-1] is not Outcome.RETRYING:
            return outcomes
    raise AssertionError(f"not settled after {limit} deliveries: {outcomes}")


def test_a_task_runs_stores_only_configured_outputs_and_is_marked_done(engine):
    executor = make_executor(engine, ["m"])
    task = Task("m", WINDOW)
    enqueue(executor, task)
    assert run_until_settled(executor, task) == [Outcome.DONE]
    row = ledger(engine, task)
    assert (row.state, row.attempts, row.runs, row.lost) == ("done", 0, 1, 0)
    assert row.rows == expected_rows(WINDOW.start, WINDOW.end)
    assert prediction_count(engine) == expected_rows(WINDOW.start, WINDOW.end)  # model-input not stored
    assert executor.queue.size() == 0


def test_a_finished_task_enqueued_again_is_skipped_and_rewrites_nothing(engine):
    executor = make_executor(engine, ["m"])
    task = Task("m", WINDOW)
    enqueue(executor, task)
    run_until_settled(executor, task)
    executor.execution.models.clear()  # a second run would now fail: proves it is not run at all
    executor.queue.put_many([task])  # a duplicate message, as a broker may deliver
    assert run_until_settled(executor, task) == [Outcome.SKIPPED]
    assert ledger(engine, task).state == "done"
    assert executor.execution.calls[("m", WINDOW.start)] == 1
    assert executor.queue.size() == 0


def test_transient_failures_are_retried_by_redelivery_and_counted(engine):
    executor = make_executor(engine, ["transient-2-m"], max_attempts=5)
    task = Task("transient-2-m", WINDOW)
    enqueue(executor, task)
    assert run_until_settled(executor, task) == [Outcome.RETRYING, Outcome.RETRYING, Outcome.DONE]
    row = ledger(engine, task)
    assert (row.state, row.attempts, row.runs) == ("done", 2, 3)


def test_a_retry_waits_in_the_queue_not_in_a_worker(engine):
    executor = make_executor(engine, ["transient-1-m"], max_attempts=5)
    executor.settings.retry_base_delay = executor.settings.retry_max_delay = timedelta(seconds=30)
    task = Task("transient-1-m", WINDOW)
    enqueue(executor, task)
    assert executor.handle(executor.queue.get(timeout=2)) is Outcome.RETRYING
    with engine.connect() as c:
        available, owner = c.execute(sa.select(QueuedTask.available_at, QueuedTask.lease_owner)).one()
    assert owner is None and available > datetime.now(timezone.utc) + timedelta(seconds=10)
    assert executor.queue.get(timeout=0.2) is None  # not visible before its delay


def test_transient_failures_past_max_attempts_fail_with_the_reason(engine):
    executor = make_executor(engine, ["transient-9-m"], max_attempts=3)
    task = Task("transient-9-m", WINDOW)
    enqueue(executor, task)
    assert run_until_settled(executor, task)[-1] is Outcome.FAILED
    row = ledger(engine, task)
    assert (row.state, row.attempts) == ("failed", 3)
    assert row.error.startswith("transient: simulated outage 3")
    assert executor.queue.size() == 0  # failed tasks are settled, not left to loop


def test_a_permanent_failure_is_not_retried(engine):
    executor = make_executor(engine, ["broken-m"], max_attempts=5)
    task = Task("broken-m", WINDOW)
    enqueue(executor, task)
    assert run_until_settled(executor, task) == [Outcome.FAILED]
    row = ledger(engine, task)
    assert (row.state, row.attempts, row.runs) == ("failed", 0, 1)
    assert row.error == "permanent: simulated bad request: Unexpected features"
    assert executor.execution.calls[("broken-m", WINDOW.start)] == 1


def test_an_unknown_model_fails_with_its_reason(engine):
    executor = make_executor(engine, ["m"])
    task = Task("ghost", WINDOW)
    enqueue(executor, task)
    assert run_until_settled(executor, task) == [Outcome.FAILED]
    assert ledger(engine, task).error == "unknown_model: unknown model 'ghost'"


def test_a_provider_bug_fails_the_task_and_the_worker_survives(engine, caplog):
    executor = make_executor(engine, ["crash-m", "m"])
    enqueue(executor, Task("crash-m", WINDOW), Task("m", WINDOW))
    with caplog.at_level(logging.ERROR, logger="latigo.executor"):
        stats = executor.run(exit_when_idle=0.5)  # real worker threads
    assert (stats.failed, stats.done) == (1, 1)
    assert ledger(engine, Task("crash-m", WINDOW)).error.startswith("internal: KeyError")
    assert "unexpected error" in caplog.text and "KeyError: 'simulated bug'" in caplog.text


def test_an_undecodable_message_is_dead_lettered_once_and_the_executor_keeps_running(engine):
    executor = make_executor(engine, ["m"])
    with engine.begin() as c:
        c.execute(sa.insert(QueuedTask), {"task_id": "junk", "body": "\x01garbage", "deliveries": 0,
                                          "available_at": T0, "enqueued_at": T0})
    enqueue(executor, Task("m", WINDOW))
    stats = executor.run(exit_when_idle=0.5)
    assert (stats.dead_letter, stats.done) == (1, 1)
    with engine.connect() as c:
        letter = c.execute(sa.select(DeadLetter)).one()
    assert letter.body == b"\x01garbage" and "not JSON" in letter.error and letter.message_id == "junk"
    assert executor.queue.size() == 0


def test_a_task_whose_runs_never_finish_is_abandoned_not_looped(engine):
    executor = make_executor(engine, ["m"])
    executor.settings.max_lost_runs = 2
    task = Task("m", WINDOW)
    enqueue(executor, task)
    for died in ("died-1", "died-2"):  # two executors started it and died (their leases expired)
        with executor.lifecycle.transaction() as connection:
            executor.lifecycle.start(connection, task, died)
    assert run_until_settled(executor, task) == [Outcome.FAILED]
    row = ledger(engine, task)
    assert row.state == "failed" and "abandoned: 2 runs never finished" in row.error
    assert executor.execution.calls == {}


def test_releases_and_redeliveries_do_not_count_as_attempts(engine):
    executor = make_executor(engine, ["m"], max_attempts=1)
    task = Task("m", WINDOW)
    enqueue(executor, task)
    for _ in range(5):  # five shutdowns hand it back before it runs
        delivery = executor.queue.get(timeout=2)
        executor._release_on_shutdown(delivery)
    assert run_until_settled(executor, task) == [Outcome.DONE]
    row = ledger(engine, task)
    assert (row.state, row.attempts, row.lost, row.runs) == ("done", 0, 0, 6)


def test_a_message_delivered_too_often_is_dead_lettered_once(engine):
    executor = make_executor(engine, ["m"])
    executor.settings.max_deliveries = 3
    task = Task("m", WINDOW)
    enqueue(executor, task)
    with engine.begin() as c:
        c.execute(sa.update(QueuedTask).values(deliveries=3))
    assert run_until_settled(executor, task) == [Outcome.DEAD_LETTER]
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(DeadLetter)).scalar() == 1
    assert ledger(engine, task).state == "failed" and executor.queue.size() == 0


def test_stop_releases_tasks_that_have_not_finished(engine):
    executor = make_executor(engine, ["m"], sleep=3.0)
    executor.settings.shutdown_timeout = timedelta(seconds=0.2)
    enqueue(executor, Task("m", WINDOW))
    runner = threading.Thread(target=executor.run)
    runner.start()
    assert wait_for(lambda: executor.execution.calls, timeout=10)
    executor.stop()
    runner.join(10)
    assert not runner.is_alive()
    assert executor.stats.released == 1
    with engine.connect() as c:
        leased, deliveries = c.execute(sa.select(QueuedTask.lease_owner, QueuedTask.deliveries)).one()
    assert leased is None and deliveries == 0  # handed back, visible at once, not counted as a delivery
    assert ledger(engine, Task("m", WINDOW)).state == "queued"


class CountingModels(StaticModels):
    """StaticModels that records the most model calls running at once."""

    def __init__(self, models, sleep):
        super().__init__(models, sleep)
        self.running = self.most_at_once = 0

    def execute_model(self, name, start, end):
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            return super().execute_model(name, start, end)
        finally:
            with self._lock:
                self.running -= 1


def slotted_executor(engine, models, concurrency, spare_workers, shutdown=5.0):
    settings = ExecutorSettings(concurrency=concurrency, spare_workers=spare_workers,
                                poll_timeout=timedelta(seconds=0.1), shutdown_timeout=timedelta(seconds=shutdown))
    lifecycle = TaskLifecycle(engine)
    queue = DatabaseTaskQueue(engine, DatabaseTaskQueue.Settings(poll_interval=timedelta(seconds=0.05)),
                              lifecycle=lifecycle)
    return Executor(settings, queue, models, lifecycle, OUTPUTS, name="test-exec")


def leased_rows(engine):
    with engine.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(QueuedTask)
                         .where(QueuedTask.lease_owner.is_not(None))).scalar()


def test_spare_workers_claim_ahead_but_only_concurrency_models_run_at_once(engine):
    names = [f"m-{i}" for i in range(6)]
    models = CountingModels(names, sleep=0.3)
    executor = slotted_executor(engine, models, concurrency=2, spare_workers=1)
    assert executor.settings.workers == 3
    enqueue(executor, *[Task(name, WINDOW) for name in names])
    runner = threading.Thread(target=executor.run)
    runner.start()
    assert wait_for(lambda: models.running == 2, timeout=10)
    assert wait_for(lambda: leased_rows(engine) == 3, timeout=5)  # the spare holds the next task, waiting
    assert wait_for(lambda: executor.stats.done == 6, timeout=30)
    executor.stop()
    runner.join(10)
    assert models.most_at_once == 2
    assert all(ledger(engine, Task(name, WINDOW)).state == "done" for name in names)
    assert executor.queue.size() == 0


def test_a_task_waiting_for_a_model_slot_at_stop_is_handed_back_without_running(engine):
    models = CountingModels(["slow", "next"], sleep=1.0)
    executor = slotted_executor(engine, models, concurrency=1, spare_workers=1)
    enqueue(executor, Task("slow", WINDOW), Task("next", WINDOW))
    runner = threading.Thread(target=executor.run)
    runner.start()
    assert wait_for(lambda: models.running == 1 and leased_rows(engine) == 2, timeout=10)
    executor.stop()
    runner.join(10)
    assert not runner.is_alive()
    assert len(models.calls) == 1  # only the first task's model ran
    ran, waited = sorted(["slow", "next"], key=lambda name: (name, T0) not in models.calls)
    assert ledger(engine, Task(ran, WINDOW)).state == "done"  # in flight: finished within shutdown_timeout
    assert ledger(engine, Task(waited, WINDOW)).state == "queued"
    with engine.connect() as c:
        leased, deliveries = c.execute(sa.select(QueuedTask.lease_owner, QueuedTask.deliveries)).one()
    assert leased is None and deliveries == 0
    assert executor.stats.released == 1 and executor.stats.done == 1


def test_spare_workers_default_to_a_quarter_of_concurrency():
    assert ExecutorSettings(concurrency=1).workers == 2
    assert ExecutorSettings(concurrency=32).workers == 40
    assert ExecutorSettings(concurrency=8, spare_workers=0).workers == 8
