"""KafkaTaskQueue against a real Kafka-protocol broker (Tansu, tests/support/tansu.py) with confluent-kafka."""

import logging
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from confluent_kafka import Producer

from latigo.config import load_config
from latigo.errors import TransientError
from latigo.executor import Executor
from latigo.factory import Components
from latigo.observability import metrics_text
from latigo.queues.kafka import KafkaSettings, KafkaTaskQueue
from latigo.queues.kafka_topic import TopicMissing
from latigo.settings import ExecutorSettings
from latigo.types import Task, TimeRange
from tests.support.tansu import SESSION_TIMEOUT, TansuBroker
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
SESSION = timedelta(seconds=int(SESSION_TIMEOUT.rstrip("s")))


def tasks_for(models, windows):
    step = timedelta(minutes=10)
    return [Task(m, TimeRange(START + i * step, START + (i + 1) * step)) for i in range(windows) for m in models]


@pytest.fixture
def tansu():
    with TansuBroker() as broker:
        yield broker


@pytest.fixture
def topic(tansu):
    name = f"tasks-{uuid.uuid4().hex[:8]}"
    tansu.create_topic(name, 4)
    return name


@pytest.fixture
def make_queue(tansu, topic):
    queues = []

    def make(**overrides):
        options = {"bootstrap_servers": tansu.bootstrap, "topic": topic, "session_timeout": SESSION,
                   "commit_interval": timedelta(milliseconds=200), **overrides}
        queue = KafkaTaskQueue(KafkaSettings(**options))
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


def produce_raw(tansu, topic, *bodies, key=b"poison"):
    producer = Producer({"bootstrap.servers": tansu.bootstrap})
    for body in bodies:
        producer.produce(topic, key=key, value=body)
        producer.flush(10)  # one request per message: Tansu's high watermark is the last batch's base + 1


def committed_through(queue, deliveries):
    """What the group's commits should be once all `deliveries` are settled: one past each partition's last."""
    last = {}
    for delivery in deliveries:
        last[int(delivery.partition_id)] = max(last.get(int(delivery.partition_id), -1), delivery.offset)
    return {pid: offset + 1 for pid, offset in last.items()}


# ---------------------------------------------------------------- configuration


def test_configured_in_yaml_and_built_by_the_factory(tmp_path, tansu, topic):
    path = tmp_path / "latigo.yaml"
    path.write_text(f"database: {{url: 'sqlite:///{tmp_path / 'c.db'}'}}\n"
                    f"task_queue: {{type: kafka, bootstrap_servers: '{tansu.bootstrap}', topic: {topic}, "
                    f"group_id: executors, session_timeout: {SESSION_TIMEOUT}}}\n")
    queue = Components(load_config(path, env={})).task_queue
    try:
        assert isinstance(queue, KafkaTaskQueue)
        assert queue.put_many(tasks_for(["m"], 3)) == 3
        assert [d.task.window.start for d in drain(queue, 3)] == [START + timedelta(minutes=10 * i) for i in range(3)]
        assert queue.probe() == (f"kafka topic {topic} at {tansu.bootstrap}: 4 partitions (0, 1, 2, 3); "
                                 "consumer group executors")
    finally:
        queue.close()


def test_a_missing_topic_is_named_or_created_when_asked(tansu):
    absent = KafkaTaskQueue(KafkaSettings(bootstrap_servers=tansu.bootstrap, topic="nowhere"))
    with pytest.raises(TopicMissing, match="kafka topic 'nowhere' does not exist at 127.0.0.1:.*create_topic: true"):
        absent.probe()
    with pytest.raises(TransientError, match="kafka topic 'nowhere' does not exist"):
        absent.put_many(tasks_for(["m"], 1))
    created = KafkaTaskQueue(KafkaSettings(bootstrap_servers=tansu.bootstrap, topic="made", create_topic=True,
                                           partitions=3))
    assert created.probe().startswith(f"kafka topic made at {tansu.bootstrap}: 3 partitions (0, 1, 2)")
    assert created.put_many(tasks_for(["m"], 2)) == 2
    absent.close()
    created.close()


# ---------------------------------------------------------------- producing and consuming


def test_tasks_round_trip_in_model_order_one_partition_per_model_and_commits_follow(make_queue):
    queue = make_queue()
    tasks = tasks_for(["alpha", "beta", "gamma", "delta", "project-b/alpha"], 12)
    assert queue.put_many(tasks) == 60
    got = drain(queue, 60)
    assert sorted(d.task.task_id for d in got) == sorted(t.task_id for t in tasks)
    assert all(d.message_id == d.task.task_id and d.error == "" and d.attempt == 1 for d in got)
    by_model = {}
    for delivery in got:
        by_model.setdefault(delivery.task.key, []).append(delivery)
    for model, deliveries in by_model.items():
        assert len({d.partition_id for d in deliveries}) == 1, f"{model} was spread over partitions"
        starts = [d.task.window.start for d in deliveries]
        assert starts == sorted(starts), f"{model}'s windows arrived out of order"
    expected = committed_through(queue, got)
    assert wait_for(lambda: {p: o for p, o in queue.committed_offsets().items() if o >= 0} == expected, 20)
    assert queue.gauges().waiting == 0 and set(queue.gauges().lag_by_partition.values()) == {0}
    assert queue.owned_partitions() == [0, 1, 2, 3]
    assert queue.put_many([]) == 0


def test_out_of_order_acks_never_commit_past_an_unfinished_task(make_queue):
    queue = make_queue()
    tasks = tasks_for(["one-model"], 6)
    queue.put_many(tasks)
    got = drain(queue, 6, ack=False)
    assert [d.task for d in got] == tasks
    pid = int(got[0].partition_id)
    for index in (5, 3, 1, 0):  # tasks 2 and 4 still running
        got[index].ack()
    assert wait_for(lambda: queue.committed_offsets()[pid] == got[1].offset + 1, 20)
    time.sleep(0.6)  # several commit intervals
    assert queue.committed_offsets()[pid] == got[1].offset + 1  # not past task 2
    assert queue.gauges().lag_by_partition[str(pid)] == 4
    queue.close()  # the executor stops with tasks 2 and 4 unfinished
    successor = make_queue()
    replayed = drain(successor, 4, ack=False)
    assert [d.task for d in replayed] == tasks[2:]  # resumes at the unfinished task; 3 and 5 are replays
    for delivery in replayed:
        delivery.ack()
    assert wait_for(lambda: successor.committed_offsets()[pid] == got[5].offset + 1, 20)


def test_a_poison_message_yields_one_delivery_and_acking_it_moves_past_it(make_queue, tansu, topic):
    queue = make_queue()
    produce_raw(tansu, topic, b"\xff\xfe not json", b'{"schema": 99, "task_id": "x"}', key=b"m")
    got = drain(queue, 2, ack=False)
    assert [d.task for d in got] == [None, None] and got[0].message_id is None
    assert got[0].body == b"\xff\xfe not json" and "not JSON" in got[0].error
    assert "schema" in got[1].error
    for delivery in got:
        delivery.ack()  # the executor dead-letters the poison, then acks it
    pid = int(got[0].partition_id)
    assert wait_for(lambda: queue.committed_offsets()[pid] == got[1].offset + 1, 20)
    assert queue.get(1.0) is None  # it does not loop
    queue.close()
    assert make_queue().get(SESSION.total_seconds()) is None  # nor does it come back for the next owner


def test_a_nack_redelivers_after_its_delay_without_holding_up_its_partition(make_queue):
    queue = make_queue()
    tasks = tasks_for(["n"], 4)
    queue.put_many(tasks[:2])
    first, second = drain(queue, 2, ack=False)
    first.ack()
    began = time.monotonic()
    second.nack(2.0)
    queue.put_many(tasks[2:])  # the same model, so the same partition
    later = drain(queue, 2)  # arrive and are done while the retry waits
    assert [d.task for d in later] == tasks[2:] and time.monotonic() - began < 2.0
    again = queue.get(5.0)
    assert again is second and again.attempt == 2 and time.monotonic() - began >= 1.9
    pid = int(first.partition_id)
    assert queue.committed_offsets()[pid] == first.offset + 1  # held at the retried message meanwhile
    again.ack()
    assert wait_for(lambda: queue.committed_offsets()[pid] == later[-1].offset + 1, 20)


def test_the_hand_off_is_bounded_and_the_consumer_stays_in_its_group_meanwhile(make_queue):
    queue = make_queue(handoff_size=3, max_poll_interval=timedelta(seconds=8), revoke_timeout=timedelta(seconds=2))
    queue.put_many(tasks_for(["a", "b", "c"], 10))
    first = queue.get(SESSION.total_seconds() * 2)
    assert first is not None
    time.sleep(10)  # longer than max_poll_interval: paused partitions are still polled
    assert queue.gauges().waiting <= 3
    assert len(drain(queue, 29)) == 29
    first.ack()
    assert queue.rebalances == 1  # never kicked out of the group


def test_group_lag_counts_what_the_group_has_not_committed(make_queue, tansu, topic):
    queue = make_queue()
    bodies = [t.to_json().encode() for t in tasks_for(["lagging"], 5)]
    produce_raw(tansu, topic, *bodies, key=b"default/lagging")
    assert sum(queue.group_lag().values()) == 5
    received = drain(queue, 5, ack=False)
    pid = received[0].partition_id
    assert wait_for(lambda: queue.gauges().consumer_lag_by_partition.get(pid) == 5, 10)  # received, not committed
    executor = Executor(ExecutorSettings(), queue, None, None, [])  # only its metrics export is used here
    executor._report_backlog()  # what its renewer thread does every 5 s
    assert f'latigo_queue_lag{{partition="{pid}"}} 5.0' in metrics_text().decode()
    for delivery in received:
        delivery.ack()
    assert wait_for(lambda: sum(queue.group_lag().values()) == 0, 20)
    assert wait_for(lambda: queue.gauges().consumer_lag_by_partition.get(pid) == 0, 10)
    executor._report_backlog()
    assert f'latigo_queue_lag{{partition="{pid}"}} 0.0' in metrics_text().decode()


# ---------------------------------------------------------------- rebalancing


def test_a_revoked_partition_finishes_its_work_in_flight_before_it_moves(make_queue, caplog):
    caplog.set_level(logging.INFO, logger="latigo")
    first = make_queue(revoke_timeout=timedelta(seconds=15))
    tasks = tasks_for([f"model-{i}" for i in range(8)], 3)
    first.put_many(tasks)
    held = drain(first, 4, ack=False)  # in flight at the first executor
    assert wait_for(lambda: first.gauges().waiting > 0)
    second = make_queue()
    second.get(0.1)  # joins the group: a rebalance revokes the first's partitions
    assert wait_for(lambda: any(o.revoking for o in first._session.owned.values()), 20)
    time.sleep(1.0)
    for delivery in held:  # finished while the rebalance waits for them
        delivery.ack()
    assert wait_for(lambda: len(second.owned_partitions()) == 2 and len(first.owned_partitions()) == 2, 30)
    rest = drain(first, 100, timeout=5) + drain(second, 100, timeout=5)
    seen = [d.task.task_id for d in held + rest]
    assert sorted(seen) == sorted(t.task_id for t in tasks)  # nothing lost, nothing run twice
    assert "gave up partitions" in caplog.text


def test_work_still_running_when_the_revoke_times_out_is_replayed_by_the_next_owner(make_queue):
    first = make_queue(revoke_timeout=timedelta(seconds=1))
    tasks = tasks_for(["slow"], 3)
    first.put_many(tasks)
    stuck = drain(first, 1, ack=False)[0]
    first.close()  # leaving the group revokes everything: the stuck task is not settled in time
    stuck.ack()  # too late: the partition is gone, its commit stays before it
    successor = make_queue()
    assert [d.task for d in drain(successor, 3)] == tasks


# ---------------------------------------------------------------- failures


def test_a_failed_send_raises_transient_error(make_queue, tansu):
    queue = make_queue(send_timeout=timedelta(seconds=2))
    queue.put_many(tasks_for(["m"], 1))
    tansu.stop()
    with pytest.raises(TransientError, match=r"2 of 2 tasks were not acknowledged by 127\.0\.0\.1"):
        queue.put_many(tasks_for(["m"], 2))


def test_a_consumer_paused_by_a_full_hand_off_consumes_again_after_a_rebalance(make_queue):
    first = make_queue(handoff_size=3)
    tasks = tasks_for([f"paused-{i}" for i in range(8)], 12)
    first.put_many(tasks)
    delivery = first.get(SESSION.total_seconds() * 2)
    delivery.ack()
    seen = {delivery.task.task_id}
    assert wait_for(lambda: first._session.paused, 10)  # the hand-off is full: its partitions are paused
    second = make_queue(handoff_size=3)
    second.get(0.1)
    assert wait_for(lambda: len(first.owned_partitions()) == 2 and len(second.owned_partitions()) == 2, 30)
    taken = {"first": 0, "second": 0}
    deadline = time.monotonic() + 60
    while len(seen) < len(tasks) and time.monotonic() < deadline:
        for name, queue in (("first", first), ("second", second)):
            delivery = queue.get(0.05)
            if delivery is not None:
                delivery.ack()
                seen.add(delivery.task.task_id)
                taken[name] += 1
    assert taken["first"] > 0 and taken["second"] > 0, taken  # both consume their partitions
    assert seen == {t.task_id for t in tasks}


def test_a_consumer_given_nothing_after_the_topic_came_back_joins_again_once(make_queue, tansu, monkeypatch,
                                                                          caplog):
    """Two consumers of a topic of one partition (one is given it, the other nothing), then a broker that
    loses the topic (restarted, its storage in memory) and the topic created again. Having seen it missing,
    the consumer given nothing joins the group again once REJOIN_AFTER later (a group that assigned from
    metadata without the topic must assign again) and never again after; the tasks are each delivered once.
    (Tasks are put by queues closed before the restart: a producer that knows the topic has Tansu create it.)"""
    monkeypatch.setattr("latigo.queues.kafka.REJOIN_AFTER", 2.0)
    caplog.set_level(logging.INFO, logger="latigo.queues.kafka")
    name = f"one-{uuid.uuid4().hex[:8]}"
    tansu.create_topic(name, 1)
    put(make_queue(topic=name), tasks_for(["early"], 3))
    consumers = [make_queue(topic=name), make_queue(topic=name)]
    got = drain_all(consumers, 3, timeout=90)
    tansu.restart()
    assert wait_for(lambda: caplog.text.count("does not exist") >= 2, 90), caplog.text[-3000:]
    tansu.create_topic(name, 1)
    put(make_queue(topic=name), tasks_for(["later"], 3))
    got += drain_all(consumers, 3, timeout=90)
    assert wait_for(lambda: "joining the group again" in caplog.text, 60), caplog.text[-3000:]
    time.sleep(6)
    assert sorted(d.task.model for d in got) == ["early"] * 3 + ["later"] * 3
    assert caplog.text.count("joining the group again") == 1, caplog.text[-3000:]


def put(queue, tasks):
    assert queue.put_many(tasks) == len(tasks)
    queue.close()


def drain_all(queues, count, timeout=30.0):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        for queue in queues:
            delivery = queue.get(0.1)
            if delivery is not None:
                got.append(delivery)
                delivery.ack()
    return got
