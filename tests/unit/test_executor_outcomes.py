"""The executor's decisions over a queue that is not in the database (as Event Hubs and Kafka are): every
outcome settles the delivery after the ledger change has committed, retries wait in the queue, and a
release counts against nothing. Fast: an in-memory queue, and a ledger on SQLite and on PostgreSQL.

The queue reads the ledger on a connection of its own at the moment a delivery is acked, nacked or
released (tests.support.memory_queue): each test asserts the outcome was already committed then, so a
settlement made inside the transaction, before its commit, fails the test."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from latigo.executor import Executor, Outcome
from latigo.lifecycle import TaskLifecycle
from latigo.peers import PeerDown
from latigo.settings import DatabaseSettings, ExecutorSettings
from latigo.settlement import TaskReleased
from latigo.storage.db import create_engine_for
from latigo.storage.tables import TaskRecord
from latigo.types import ModelRef, PredictionFrame, Task, TimeRange
from tests.support.memory_queue import Committed, MemoryQueue, Settlement
from tests.support.providers import StaticModels

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
WINDOW = TimeRange(T0, T0 + timedelta(minutes=30))


class Models(StaticModels):
    """StaticModels, and two models whose run meets an outage: `peer-down-m` a peer whose breaker is
    open, `database-lost-m` the database connection lost under it."""

    def execute_model(self, model: ModelRef, start: datetime, end: datetime) -> PredictionFrame:
        if model.name == "peer-down-m":
            raise PeerDown("sensor-data", T0, 5.0, "connection refused")
        if model.name == "database-lost-m":
            raise sa.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        return super().execute_model(model, start, end)


@pytest.fixture
def executor(db_url):
    engine = create_engine_for(DatabaseSettings(url=db_url))
    observer = create_engine_for(DatabaseSettings(url=db_url))  # the queue's own connections to the ledger
    settings = ExecutorSettings(concurrency=1, max_attempts=3, retry_base_delay=timedelta(seconds=60),
                                retry_max_delay=timedelta(seconds=60), poll_timeout=timedelta(seconds=0.05))
    queue = MemoryQueue(ledger=observer)
    models = Models(["m", "transient-9-m", "broken-m", "peer-down-m", "database-lost-m"])
    yield Executor(settings, queue, models, TaskLifecycle(engine), ["model-output"])
    engine.dispose()
    observer.dispose()


def send(executor, *tasks):
    with executor.lifecycle.transaction() as connection:
        executor.queue.put_many(executor.lifecycle.enqueue(connection, tasks).to_send)


def row(executor, task):
    with executor.lifecycle.engine.connect() as c:
        return c.execute(sa.select(TaskRecord).where(TaskRecord.task_id == task.task_id)).one()


def settlements(executor, task) -> list[Settlement]:
    return [s for s in executor.queue.settlements if s.task_id == task.task_id]


def only_settlement(executor, task) -> tuple[str, Committed]:
    """The one settlement of the task and what the ledger had committed when it was made."""
    (settlement,) = settlements(executor, task)
    assert settlement.committed is not None
    return settlement.action, settlement.committed


def test_done_is_acked_after_the_commit(executor):
    task = Task("m", WINDOW)
    send(executor, task)
    delivery = executor.queue.get(1)
    assert executor.handle(delivery) is Outcome.DONE
    action, committed = only_settlement(executor, task)
    assert action == "ack" and committed.state == "done"  # not `running`: the ack waited for the commit
    assert delivery.settled == "ack" and row(executor, task).state == "done"


def test_a_transient_failure_is_nacked_after_the_commit_with_its_delay_and_the_worker_moves_on(executor):
    task = Task("transient-9-m", WINDOW)
    send(executor, task)
    assert executor.handle(executor.queue.get(1)) is Outcome.RETRYING
    (settlement,) = settlements(executor, task)
    assert settlement.action == "nack" and 30 <= settlement.delay <= 60  # the backoff waits in the queue
    assert settlement.committed == Committed("queued", 1, "transient: simulated outage 1", 0)  # attempt counted
    assert executor.queue.get(0.05) is None
    assert row(executor, task).attempts == 1


def test_the_last_transient_failure_is_acked_after_the_failure_committed(executor):
    task = Task("transient-9-m", WINDOW)
    send(executor, task)
    outcomes = [executor.handle(executor.queue.get(1))]
    for _ in range(2):
        executor.queue.put_many([task])  # the redelivery, without waiting out the backoff
        outcomes.append(executor.handle(executor.queue.get(1)))
    assert outcomes == [Outcome.RETRYING, Outcome.RETRYING, Outcome.FAILED]
    seen = [(s.action, s.committed and (s.committed.state, s.committed.attempts)) for s in settlements(executor, task)]
    assert seen == [("nack", ("queued", 1)), ("nack", ("queued", 2)), ("ack", ("failed", 3))]


def test_a_permanent_failure_is_acked_once_recorded(executor):
    task = Task("broken-m", WINDOW)
    send(executor, task)
    delivery = executor.queue.get(1)
    assert executor.handle(delivery) is Outcome.FAILED
    action, committed = only_settlement(executor, task)
    assert action == "ack" and committed.state == "failed" and (committed.error or "").startswith("permanent: ")
    assert delivery.settled == "ack" and row(executor, task).state == "failed"


def test_a_refused_message_is_acked_once_its_dead_letter_committed(executor):
    task = Task("m", TimeRange(T0, T0 + timedelta(days=2)))  # longer than executor.max_window
    send(executor, task)
    assert executor.handle(executor.queue.get(1)) is Outcome.DEAD_LETTER
    action, committed = only_settlement(executor, task)
    assert action == "ack" and committed.dead_letters == 1 and committed.state == "failed"
    assert (committed.error or "").startswith("dead_letter: window")
    assert executor.execution.calls == {}


def test_a_redelivered_done_task_is_acked_without_running(executor):
    task = Task("m", WINDOW)
    send(executor, task)
    executor.handle(executor.queue.get(1))
    executor.queue.put_many([task])  # a broker's duplicate
    duplicate = executor.queue.get(1)
    assert executor.handle(duplicate) is Outcome.SKIPPED and duplicate.settled == "ack"
    assert [(s.action, s.committed and s.committed.state) for s in settlements(executor, task)] == [
        ("ack", "done"), ("ack", "done")]
    assert executor.execution.calls[("m", WINDOW.start)] == 1


def test_a_task_stopped_before_its_model_ran_is_released_after_the_commit(executor):
    task = Task("m", WINDOW)
    send(executor, task)
    executor.stopping.set()  # the executor began stopping while the task waited for a model slot
    assert executor.handle(executor.queue.get(1)) is Outcome.RELEASED
    action, committed = only_settlement(executor, task)
    assert action == "release" and committed.state == "queued"  # not the `running` its start committed
    assert executor.execution.calls == {}


def test_a_task_whose_peer_is_down_is_released_after_the_commit(executor):
    task = Task("peer-down-m", WINDOW)
    send(executor, task)
    assert executor.handle(executor.queue.get(1)) is Outcome.WAITING
    (settlement,) = settlements(executor, task)
    assert settlement.action == "release" and settlement.delay >= 5.0
    assert settlement.committed is not None and settlement.committed.state == "queued"
    assert (settlement.committed.error or "").startswith("waiting: sensor-data is down")
    assert settlement.committed.attempts == 0


def test_a_task_the_database_failed_under_is_released_after_the_commit(executor):
    task = Task("database-lost-m", WINDOW)
    send(executor, task)
    with pytest.raises(TaskReleased):
        executor.handle(executor.queue.get(1))
    action, committed = only_settlement(executor, task)
    assert action == "release" and committed.state == "queued" and committed.attempts == 0


def test_a_release_at_shutdown_counts_nothing(executor):
    task = Task("m", WINDOW)
    send(executor, task)
    for _ in range(4):
        executor._release_on_shutdown(executor.queue.get(1))
    assert executor.handle(executor.queue.get(1)) is Outcome.DONE
    record = row(executor, task)
    assert (record.attempts, record.lost, record.runs) == (0, 0, 1)
    assert [s.action for s in settlements(executor, task)] == ["release"] * 4 + ["ack"]
