"""EventHubTaskQueue over real AMQP 1.0 (the test broker) with the unmodified SDK and a real database."""

import logging
import time
from datetime import datetime, timedelta, timezone

import pytest
from azure.eventhub import EventData, EventHubProducerClient

from latigo.config import load_config
from latigo.errors import ConfigError, TransientError
from latigo.factory import Components
from latigo.queues.eventhub import EventHubSettings, EventHubTaskQueue
from latigo.queues.partition_tracker import Position
from latigo.settings import DatabaseSettings
from latigo.storage import migrations
from latigo.storage.db import create_engine_for
from latigo.types import Task, TimeRange
from tests.support.eventhub_broker import EventHubBroker
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
SECRET = "Sup3rSecretAccessKey0123456789"


def tasks_for(models, windows):
    step = timedelta(minutes=10)
    return [Task(m, TimeRange(START + i * step, START + (i + 1) * step)) for i in range(windows) for m in models]


@pytest.fixture
def sqlite_engine(tmp_path):
    engine = create_engine_for(DatabaseSettings(url=f"sqlite:///{tmp_path / 'latigo.db'}"))
    migrations.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def make_queue(broker, sqlite_engine):
    queues = []

    def make(engine=None, **overrides):
        options = {"connection_string": broker.connection_string(key=SECRET),
                   "load_balancing_interval": timedelta(seconds=0.5), "ownership_expiry": timedelta(seconds=3),
                   **overrides}
        queue = EventHubTaskQueue(EventHubSettings(**options), engine or sqlite_engine)
        queues.append(queue)
        return queue

    yield make
    for queue in queues:
        queue.close()


def drain(queue, count, timeout=30.0, ack=True):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        delivery = queue.get(0.5)
        if delivery is not None:
            got.append(delivery)
            if ack:
                delivery.ack()
    return got




def send_raw(broker, *bodies, key="poison"):
    producer = EventHubProducerClient.from_connection_string(broker.connection_string())
    batch = producer.create_batch(partition_key=key)
    for body in bodies:
        batch.add(EventData(body))
    producer.send_batch(batch)
    producer.close()


# ---------------------------------------------------------------- configuration


def test_configured_through_the_seed_variable_and_built_by_the_factory(tmp_path, broker):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = tmp_path / "latigo.yaml"
    path.write_text(f"database: {{url: '{url}'}}\ntask_queue: {{type: eventhub, prefetch: 5}}\n")
    config = load_config(path, env={"LATIGO_INTERNAL_EVENT_HUB": broker.connection_string(key=SECRET)})
    components = Components(config)
    migrations.upgrade(components.engine)
    queue = components.task_queue
    try:
        assert isinstance(queue, EventHubTaskQueue)
        assert queue.eventhub_name == "tasks" and queue.consumer_group == "$Default"
        assert queue.settings.prefetch == 5
        assert queue.put_many(tasks_for(["m"], 3)) == 3
    finally:
        queue.close()
        components.engine.dispose()


def test_bad_settings_are_config_errors_that_do_not_echo_the_connection_string(sqlite_engine):
    without_entity = f"Endpoint=sb://example.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey={SECRET}"
    with pytest.raises(ConfigError, match="eventhub_name") as missing:
        EventHubTaskQueue(EventHubSettings(connection_string=without_entity), sqlite_engine)
    with pytest.raises(ConfigError, match="connection_string") as garbage:
        EventHubTaskQueue(EventHubSettings(connection_string=f"nonsense;SharedAccessKey={SECRET}"), sqlite_engine)
    with pytest.raises(ConfigError, match="required"):
        EventHubTaskQueue(EventHubSettings(), sqlite_engine)
    assert SECRET not in str(missing.value) + str(garbage.value)
    named = EventHubTaskQueue(EventHubSettings(connection_string=without_entity, eventhub_name="hub"), sqlite_engine)
    assert named.eventhub_name == "hub"


# ---------------------------------------------------------------- producing and consuming


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_tasks_round_trip_in_model_order_and_acks_checkpoint(backend, request, make_queue, broker):
    engine = request.getfixturevalue("pg_engine") if backend == "postgresql" else None
    queue = make_queue(engine)
    tasks = tasks_for(["alpha", "beta", "gamma", "delta"], 15)
    assert queue.put_many(tasks) == 60
    got = drain(queue, 60)
    assert sorted(d.task.task_id for d in got) == sorted(t.task_id for t in tasks)
    assert all(d.message_id == d.task.task_id and d.error == "" and d.attempt == 1 for d in got)
    by_model = {}
    for delivery in got:
        by_model.setdefault(delivery.task.model, []).append(delivery)
    for model, deliveries in by_model.items():
        assert len({d.partition_id for d in deliveries}) == 1, f"{model} was spread over partitions"
        starts = [d.task.window.start for d in deliveries]
        assert starts == sorted(starts), f"{model}'s windows arrived out of order"
    counts = broker.event_counts()
    expected = {pid: Position(str(_last_offset(got, pid)), n - 1) for pid, n in counts.items() if n}
    assert wait_for(lambda: queue.checkpoints() == expected)
    assert queue.gauges().waiting == 0
    assert set(queue.gauges().lag_by_partition.values()) == {0}
    assert queue.owned_partitions() == ["0", "1", "2", "3"]
    assert queue.put_many([]) == 0
    if engine is not None:
        queue.close()
        engine.dispose()


def _last_offset(deliveries, pid):
    return max((d for d in deliveries if d.partition_id == pid), key=lambda d: d.sequence_number).offset


def test_a_large_put_is_split_into_batches_within_the_size_limit(make_queue, broker):
    queue = make_queue()
    tasks = tasks_for(["only-model"], 6000)  # ~1.3 MB of events for one partition key
    assert queue.put_many(tasks) == 6000
    assert sum(broker.event_counts().values()) == 6000


def test_the_hand_off_is_bounded(make_queue):
    queue = make_queue(handoff_size=3, prefetch=5)
    queue.put_many(tasks_for(["a", "b"], 20))
    first = queue.get(10)
    assert first is not None
    time.sleep(1.5)  # the receive thread fills the hand-off and waits
    assert queue.gauges().waiting <= 3
    rest = drain(queue, 39)
    assert len(rest) == 39


def test_out_of_order_acks_never_checkpoint_past_an_unfinished_task(make_queue, broker):
    queue = make_queue()
    tasks = tasks_for(["one-model"], 6)
    queue.put_many(tasks)
    got = drain(queue, 6, ack=False)
    assert [d.task for d in got] == tasks
    pid = got[0].partition_id
    for index in (5, 3, 1, 0):  # task 2 (and 4) still running
        got[index].ack()
    assert wait_for(lambda: queue.checkpoints().get(pid) == Position(got[1].offset, got[1].sequence_number))
    time.sleep(0.5)
    assert queue.checkpoints()[pid].sequence_number == got[1].sequence_number  # not past task 2
    assert queue.gauges().lag_by_partition[pid] == 4
    queue.close()  # the executor dies with tasks 2 and 4 unfinished
    successor = make_queue()
    replayed = drain(successor, 4, ack=False)
    assert [d.task for d in replayed] == tasks[2:]  # resumes at the unfinished task; 3 and 5 are replays
    for delivery in replayed:
        delivery.ack()
    assert wait_for(lambda: successor.checkpoints()[pid].sequence_number == got[5].sequence_number)


@pytest.mark.slow
def test_a_poison_event_yields_one_delivery_and_acking_it_moves_past_it(make_queue, broker):
    queue = make_queue()
    send_raw(broker, b"\xff\xfe not json", '{"schema": 99, "task_id": "x"}', key="m")
    queue.put_many(tasks_for(["m"], 2))
    got = drain(queue, 4, ack=False)
    poison = [d for d in got if d.task is None]
    assert len(poison) == 2
    assert poison[0].body == b"\xff\xfe not json" and "not JSON" in poison[0].error
    assert "schema" in poison[1].error
    for delivery in got:
        delivery.ack()  # the executor dead-letters the poison, then acks it
    pid = got[0].partition_id
    assert wait_for(lambda: queue.checkpoints().get(pid, Position("", -1)).sequence_number == 3)
    assert queue.get(1.0) is None  # it does not loop
    queue.close()
    assert make_queue().get(3.0) is None  # nor does it come back for the next owner


@pytest.mark.slow
def test_a_nack_redelivers_after_its_delay_and_holds_the_checkpoint_meanwhile(make_queue):
    queue = make_queue()
    tasks = tasks_for(["n"], 3)
    queue.put_many(tasks)
    first, second, third = drain(queue, 3, ack=False)
    first.ack()
    began = time.monotonic()
    second.nack(1.0)
    third.ack()
    again = queue.get(5.0)
    assert again is second and again.attempt == 2 and time.monotonic() - began >= 0.9
    assert wait_for(lambda: queue.checkpoints().get(first.partition_id) is not None)
    assert queue.checkpoints()[first.partition_id].sequence_number == first.sequence_number  # held at the nack


@pytest.mark.slow
def test_a_delayed_event_left_at_shutdown_comes_back_with_the_next_owner(make_queue):
    queue = make_queue()
    tasks = tasks_for(["n"], 3)
    queue.put_many(tasks)
    first, second, third = drain(queue, 3, ack=False)
    first.ack()
    second.nack(60)
    third.ack()
    assert wait_for(lambda: queue.checkpoints().get(first.partition_id) is not None)
    queue.close()
    again = drain(make_queue(), 2, ack=False)
    assert [d.task for d in again] == tasks[1:]


@pytest.mark.slow
def test_a_lost_partition_drops_its_queued_work_and_its_acks_stop_checkpointing(make_queue, broker):
    first = make_queue(handoff_size=100)
    first.put_many(tasks_for([f"model-{i}" for i in range(12)], 4))
    held = drain(first, 20, ack=False)  # in flight at the first executor
    assert wait_for(lambda: first.gauges().waiting >= 20)
    second = make_queue(handoff_size=100)
    second.get(0.1)  # starts its consumer: the balancer moves partitions to it
    assert wait_for(lambda: len(second.owned_partitions()) >= 2 and len(first.owned_partitions()) <= 2)
    lost = set(second.owned_partitions())
    assert wait_for(lambda: not lost & set(first.owned_partitions()))
    remaining = drain(first, 100, timeout=3, ack=False)
    assert all(d.partition_id not in lost for d in remaining), "queued work of a lost partition was handed out"
    for delivery in held:
        delivery.ack()
    time.sleep(0.5)
    assert not lost & set(first.checkpoints()), "an ack checkpointed a partition the executor no longer owns"
    counts = broker.event_counts()
    taken_over = drain(second, sum(counts[p] for p in lost))
    assert {d.partition_id for d in taken_over} == lost
    assert len(taken_over) == sum(counts[p] for p in lost)  # replayed from the start: nothing lost


# ---------------------------------------------------------------- failures


@pytest.mark.slow
def test_a_failed_send_raises_transient_error_without_the_secret(sqlite_engine, caplog):
    broker = EventHubBroker(hub="tasks", partitions=2).start()
    queue = EventHubTaskQueue(EventHubSettings(connection_string=broker.connection_string(key=SECRET),
                                               send_retries=1), sqlite_engine)
    queue.put_many(tasks_for(["m"], 1))
    broker.stop()
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(TransientError, match="sending 2 tasks of model 'm' failed after 2 attempts") as failed:
            queue.put_many(tasks_for(["m"], 2))
    finally:
        queue.close()
    assert SECRET not in str(failed.value)
    assert SECRET not in caplog.text


@pytest.mark.slow
def test_the_watchdog_restarts_a_consumer_that_went_silent(make_queue, broker, caplog):
    caplog.set_level(logging.INFO, logger="latigo")
    queue = make_queue(watchdog_silence=timedelta(seconds=2))
    queue.put_many(tasks_for(["w"], 3))
    assert len(drain(queue, 3)) == 3
    broker.stall_connections()  # the consumer's connections stay open but nothing flows any more
    make_queue().put_many(tasks_for(["w"], 6)[3:])  # the scheduler (another process) goes on publishing
    late = drain(queue, 3, timeout=60)
    assert [d.task.window.start for d in late] == [START + timedelta(minutes=10 * i) for i in (3, 4, 5)]
    assert queue.restarts >= 1
    assert "restarting the event hub consumer" in caplog.text
    assert SECRET not in caplog.text


def test_a_producer_whose_connection_was_dropped_reconnects(make_queue, broker):
    """The service closes idle connections (after 240 s on Azure); the next put must simply work."""
    queue = make_queue(send_retries=2)
    assert queue.put_many(tasks_for(["idle"], 2)) == 2
    broker.disconnect_all()
    assert queue.put_many(tasks_for(["idle"], 4)[2:]) == 2
    assert sum(broker.event_counts().values()) == 4


@pytest.mark.slow
def test_a_consumer_whose_connections_were_dropped_resumes_without_loss(make_queue, broker):
    queue = make_queue()
    tasks = tasks_for(["drop-a", "drop-b", "drop-c"], 10)
    queue.put_many(tasks[:15])
    first = drain(queue, 15)
    broker.disconnect_all()
    make_queue().put_many(tasks[15:])
    rest = drain(queue, 15, timeout=60)
    seen = [d.task.task_id for d in first + rest]
    assert set(seen) == {t.task_id for t in tasks}  # nothing lost (a replay would only repeat, never skip)
