"""The executor's decisions over a queue that is not in the database (as Event Hubs is): every outcome
settles the delivery after the ledger change has committed, retries wait in the queue, and a release
counts against nothing. Fast: an in-memory queue and a SQLite ledger."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from latigo.executor import Executor, Outcome
from latigo.lifecycle import TaskLifecycle
from latigo.settings import DatabaseSettings, ExecutorSettings
from latigo.storage import migrations
from latigo.storage.db import create_engine_for
from latigo.storage.tables import TaskRecord
from latigo.types import Task, TimeRange
from tests.support.memory_queue import MemoryQueue
from tests.support.providers import StaticModels

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
WINDOW = TimeRange(T0, T0 + timedelta(minutes=30))


@pytest.fixture
def executor(tmp_path):
    engine = create_engine_for(DatabaseSettings(url=f"sqlite:///{tmp_path / 'latigo.db'}"))
    migrations.upgrade(engine)
    settings = ExecutorSettings(concurrency=1, max_attempts=3, retry_base_delay=timedelta(seconds=60),
                                retry_max_delay=timedelta(seconds=60), poll_timeout=timedelta(seconds=0.05))
    queue = MemoryQueue()
    yield Executor(settings, queue, StaticModels(["m", "transient-9-m", "broken-m"]), TaskLifecycle(engine),
                   ["model-output"])
    engine.dispose()


def send(executor, *tasks):
    with executor.lifecycle.transaction() as connection:
        executor.queue.put_many(executor.lifecycle.enqueue(connection, tasks).to_send)


def row(executor, task):
    with executor.lifecycle.engine.connect() as c:
        return c.execute(sa.select(TaskRecord).where(TaskRecord.task_id == task.task_id)).one()


def test_done_is_acked_after_the_commit(executor):
    send(executor, Task("m", WINDOW))
    delivery = executor.queue.get(1)
    assert executor.handle(delivery) is Outcome.DONE
    assert delivery.settled == "ack" and row(executor, delivery.task).state == "done"


def test_a_transient_failure_is_nacked_with_its_delay_and_the_worker_moves_on(executor):
    send(executor, Task("transient-9-m", WINDOW))
    assert executor.handle(executor.queue.get(1)) is Outcome.RETRYING
    action, _, delay = executor.queue.history[-1]
    assert action == "nack" and 30 <= delay <= 60  # the backoff waits in the queue, not in a worker
    assert executor.queue.get(0.05) is None
    assert row(executor, Task("transient-9-m", WINDOW)).attempts == 1


def test_a_permanent_failure_is_acked_once_recorded(executor):
    send(executor, Task("broken-m", WINDOW))
    delivery = executor.queue.get(1)
    assert executor.handle(delivery) is Outcome.FAILED
    assert delivery.settled == "ack" and row(executor, delivery.task).state == "failed"


def test_a_redelivered_done_task_is_acked_without_running(executor):
    task = Task("m", WINDOW)
    send(executor, task)
    executor.handle(executor.queue.get(1))
    executor.queue.put_many([task])  # a broker's duplicate
    duplicate = executor.queue.get(1)
    assert executor.handle(duplicate) is Outcome.SKIPPED and duplicate.settled == "ack"
    assert executor.execution.calls[("m", WINDOW.start)] == 1


def test_a_release_at_shutdown_counts_nothing(executor):
    task = Task("m", WINDOW)
    send(executor, task)
    for _ in range(4):
        executor._release_on_shutdown(executor.queue.get(1))
    assert executor.handle(executor.queue.get(1)) is Outcome.DONE
    record = row(executor, task)
    assert (record.attempts, record.lost, record.runs) == (0, 0, 1)
