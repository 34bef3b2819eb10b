"""The database task queue on real PostgreSQL and SQLite: claims, leases, acks, nacks, wake-ups."""

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from latigo.lifecycle import TaskLifecycle
from latigo.queues.database import DatabaseTaskQueue
from latigo.storage.tables import QueuedTask, TaskRecord
from latigo.types import Started, Task, TimeRange

pytestmark = pytest.mark.integration
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def tasks(n, model="m"):
    return [Task(model, TimeRange(T0 + i * timedelta(minutes=10), T0 + (i + 1) * timedelta(minutes=10)))
            for i in range(n)]


def queue(engine, owner="exec-1", lease=60.0, **kw):
    return DatabaseTaskQueue(engine, DatabaseTaskQueue.Settings(lease=timedelta(seconds=lease),
                                                                poll_interval=timedelta(seconds=0.05), **kw), owner)


def test_put_get_ack_round_trip(engine):
    q = queue(engine)
    sent = tasks(3)
    assert q.put_many(sent) == 3
    got = [q.get(timeout=1) for _ in range(3)]
    assert sorted(d.task.task_id for d in got) == sorted(t.task_id for t in sent)
    assert all(d.attempt == 1 and d.message_id == d.task.task_id and d.started is None for d in got)
    assert q.get(timeout=0.1) is None  # all leased
    for delivery in got:
        delivery.ack()
    assert q.size() == 0


def test_a_claim_starts_the_task_in_the_ledger_in_the_same_transaction(engine):
    lifecycle = TaskLifecycle(engine)
    q = DatabaseTaskQueue(engine, owner="exec-1", lifecycle=lifecycle)
    with lifecycle.transaction() as c:
        q.put_many(lifecycle.enqueue(c, tasks(2)).to_send, c)
    delivery = q.get(timeout=1)
    assert delivery.started == Started(True, "queued", 0, 0)
    with engine.connect() as c:
        states = dict(c.execute(sa.select(TaskRecord.task_id, TaskRecord.state)).all())
        runs = c.execute(sa.select(TaskRecord.runs, TaskRecord.executor)
                         .where(TaskRecord.task_id == delivery.task.task_id)).one()
    assert states[delivery.task.task_id] == "running" and sorted(states.values()) == ["queued", "running"]
    assert tuple(runs) == (1, "exec-1")
    q.close()


def test_a_claim_counts_a_lost_run_leaves_a_finished_task_alone_and_records_an_unknown_one(engine):
    """The claim's start (one statement with the claim on PostgreSQL) in each state the ledger can be in."""
    lifecycle = TaskLifecycle(engine)
    lost, finished, unknown = tasks(3)
    with lifecycle.transaction() as c:
        lifecycle.enqueue(c, [lost, finished])
        lifecycle.start(c, lost, "died")  # started by an executor that never finished it
        c.execute(sa.update(TaskRecord).where(TaskRecord.task_id == finished.task_id).values(state="done"))
    q = DatabaseTaskQueue(engine, owner="exec-1", lifecycle=lifecycle)
    q.put_many([lost, finished, unknown])
    started = {d.task.task_id: d.started for d in (q.get(timeout=1) for _ in range(3))}
    assert started == {lost.task_id: Started(True, "queued", 0, 1), finished.task_id: Started(False, "done"),
                       unknown.task_id: Started(True, "queued")}
    with engine.connect() as c:
        rows = {r.task_id: r for r in c.execute(sa.select(TaskRecord)).all()}
    assert (rows[lost.task_id].state, rows[lost.task_id].runs, rows[lost.task_id].lost) == ("running", 2, 1)
    assert (rows[finished.task_id].state, rows[finished.task_id].runs) == ("done", 0)
    assert (rows[unknown.task_id].state, rows[unknown.task_id].executor) == ("running", "exec-1")
    q.close()


def test_the_same_task_enqueued_twice_is_queued_once(engine):
    q = queue(engine)
    q.put_many(tasks(2))
    q.put_many(tasks(2))
    assert q.size() == 2


def test_an_expired_lease_makes_the_task_visible_to_another_executor(engine):
    dying = queue(engine, "dying", lease=0.3)
    dying.put_many(tasks(1))
    first = dying.get(timeout=1)
    assert first is not None
    survivor = queue(engine, "survivor", lease=30)
    assert survivor.get(timeout=0.05) is None
    second = survivor.get(timeout=5)  # the lease ran out
    assert second is not None and second.task == first.task and second.attempt == 2
    first.ack()  # too late: the dying executor's ack must not remove the survivor's claim
    assert survivor.size() == 1
    second.ack()
    assert survivor.size() == 0


def test_renew_keeps_the_claim(engine):
    q = queue(engine, lease=0.5)
    q.put_many(tasks(1))
    delivery = q.get(timeout=1)
    other = queue(engine, "other", lease=0.5)
    for _ in range(4):
        time.sleep(0.25)
        delivery.renew()
        assert other.get(timeout=0) is None
    delivery.ack()


def test_nack_with_delay_hides_the_task_until_then(engine):
    q = queue(engine)
    q.put_many(tasks(1))
    q.get(timeout=1).nack(delay=0.5)
    assert q.get(timeout=0) is None
    again = q.get(timeout=5)
    assert again is not None and again.attempt == 2


def test_undecodable_bodies_come_out_with_their_error(engine):
    with engine.begin() as c:
        c.execute(sa.insert(QueuedTask), {"task_id": "junk", "body": "{not json", "deliveries": 0,
                                          "available_at": T0, "enqueued_at": T0})
    delivery = queue(engine).get(timeout=1)
    assert delivery.task is None
    assert delivery.body == b"{not json"
    assert "not JSON" in delivery.error


def test_concurrent_claimers_never_get_the_same_task(engine):
    q = queue(engine)
    q.put_many(tasks(200))
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name):
        mine = queue(engine, name)
        while (d := mine.get(timeout=0.2)) is not None:
            with lock:
                claimed.append(d.task.task_id)
            d.ack()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 200 and len(set(claimed)) == 200


def test_postgres_notification_wakes_a_waiting_executor(pg_engine):
    engine = pg_engine
    # Polling every 60 s: only the NOTIFY can deliver the task within the 20 s get() below.
    waiting = DatabaseTaskQueue(engine, DatabaseTaskQueue.Settings(poll_interval=timedelta(seconds=60)), "waiter")
    waiting.get(timeout=0.3)  # starts the listener
    time.sleep(0.5)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("d", waiting.get(timeout=20)))
    thread.start()
    time.sleep(0.3)
    queue(engine, "producer").put_many(tasks(1))
    thread.join()
    assert result["d"] is not None
    waiting.close()
