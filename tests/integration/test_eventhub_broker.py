"""The test broker speaks enough Event Hubs for the unmodified azure-eventhub SDK (its pure-Python AMQP stack)."""

import struct
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from azure.eventhub import EventData, EventHubConsumerClient, EventHubProducerClient
from proton import Data, Described, ulong

from tests.support.eventhub_broker import pad_frame

pytestmark = pytest.mark.integration


@pytest.fixture
def producer(broker):
    client = EventHubProducerClient.from_connection_string(broker.connection_string())
    yield client
    client.close()


def receive(broker, count, timeout=20.0, **kwargs):
    """Events (and errors) from one consumer client until `count` arrived or the timeout.

    (receive_batch: the SDK's one-event `receive` waits out a socket timeout per event and partition.)"""
    client = EventHubConsumerClient.from_connection_string(broker.connection_string(), consumer_group="$Default")
    events, errors = [], []
    kwargs.setdefault("starting_position", "-1")
    thread = threading.Thread(
        target=client.receive_batch,
        kwargs={"on_event_batch": lambda ctx, batch: events.extend((ctx.partition_id, ev) for ev in batch),
                "on_error": lambda ctx, err: errors.append(err), **kwargs},
        daemon=True,
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    client.close()
    thread.join(20)
    return events, errors


def test_performatives_are_padded_to_their_full_field_count():
    data = Data()
    data.put_object(Described(ulong(0x14), [ulong(1)]))  # a transfer with only its handle, as proton sends
    body = data.encode()
    frame = struct.pack(">IBBH", 8 + len(body) + 3, 2, 0, 5) + body + b"abc"
    padded = pad_frame(frame)
    decoded = Data()
    used = decoded.decode(padded[8:])
    value = decoded.get_object()
    assert value.descriptor == 0x14 and len(value.value) == 11 and value.value[1:] == [None] * 10
    assert padded[8 + used:] == b"abc"  # the payload is untouched
    assert struct.unpack(">I", padded[:4])[0] == len(padded) and padded[4:8] == frame[4:8]


def test_hub_and_partition_properties(broker, producer):
    assert producer.get_eventhub_properties()["partition_ids"] == ["0", "1", "2", "3"]
    empty = producer.get_partition_properties("2")
    assert empty["is_empty"] and empty["last_enqueued_sequence_number"] == -1
    batch = producer.create_batch(partition_id="2")
    batch.add(EventData(b"x"))
    producer.send_batch(batch)
    props = producer.get_partition_properties("2")
    assert (props["is_empty"], props["last_enqueued_sequence_number"], props["last_enqueued_offset"]) == (False, 0, "0")


def test_a_batch_is_unpacked_into_events_that_keep_their_order_and_properties(broker, producer):
    batch = producer.create_batch(partition_key="model-a")
    for i in range(30):
        event = EventData(f"event {i}")
        event.message_id = f"id-{i}"
        event.properties = {"n": i}
        batch.add(event)
    producer.send_batch(batch)
    counts = broker.event_counts()
    assert sorted(counts.values()) == [0, 0, 0, 30]  # one key, one partition
    events, errors = receive(broker, 30)
    assert not errors
    assert [ev.body_as_str() for _, ev in events] == [f"event {i}" for i in range(30)]
    assert [ev.sequence_number for _, ev in events] == list(range(30))
    offsets = [int(ev.offset) for _, ev in events]
    assert offsets == sorted(offsets) and len(set(offsets)) == 30
    first = events[0][1]
    assert first.message_id == "id-0" and first.properties[b"n"] == 0 and first.partition_key == b"model-a"
    assert abs(first.enqueued_time - datetime.now(timezone.utc)) < timedelta(minutes=1)


def test_keys_spread_over_partitions_and_unkeyed_sends_round_robin(broker, producer):
    for key in ("a", "b", "c", "d", "e", "f", "g", "h"):
        batch = producer.create_batch(partition_key=key)
        batch.add(EventData(key))
        producer.send_batch(batch)
    assert sum(1 for n in broker.event_counts().values() if n) >= 2
    before = broker.event_counts()
    for _ in range(4):
        producer.send_event(EventData("unkeyed"))  # a single message, not a batch format
    after = broker.event_counts()
    assert all(after[p] - before[p] == 1 for p in after)


@pytest.mark.slow
def test_selector_filters_start_after_an_offset_or_at_a_sequence_number(broker, producer):
    batch = producer.create_batch(partition_id="1")
    for i in range(10):
        batch.add(EventData(f"e{i}"))
    producer.send_batch(batch)
    everything, _ = receive(broker, 10, partition_id="1")
    offset_of_3 = everything[3][1].offset
    after_offset, _ = receive(broker, 6, partition_id="1", starting_position=offset_of_3)
    assert [ev.body_as_str() for _, ev in after_offset] == [f"e{i}" for i in range(4, 10)]
    from_seq, _ = receive(broker, 3, partition_id="1", starting_position=7, starting_position_inclusive=True)
    assert [ev.body_as_str() for _, ev in from_seq] == ["e7", "e8", "e9"]
    latest, _ = receive(broker, 1, timeout=2, partition_id="1", starting_position="@latest")
    assert latest == []


def test_a_receiver_with_the_same_epoch_steals_the_partition(broker, producer):
    first = EventHubConsumerClient.from_connection_string(broker.connection_string(), consumer_group="$Default")
    errors, events = [], []
    thread = threading.Thread(target=first.receive, daemon=True, kwargs={
        "on_event": lambda ctx, ev: events.append(ev), "on_error": lambda ctx, err: errors.append(err),
        "partition_id": "0", "owner_level": 0, "starting_position": "-1"})
    thread.start()
    deadline = time.monotonic() + 20
    while broker.receiver_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    stolen_at = time.monotonic()
    second, _ = receive(broker, 1, timeout=3, partition_id="0", owner_level=0)
    while not errors and time.monotonic() < stolen_at + 20:
        time.sleep(0.05)
    first.close()
    thread.join(20)
    assert errors, "the first receiver was not disconnected"
    assert "epoch" in str(errors[0]).lower() or "stolen" in str(errors[0]).lower()


@pytest.mark.slow
def test_a_lower_epoch_is_refused(broker):
    holder = EventHubConsumerClient.from_connection_string(broker.connection_string(), consumer_group="$Default")
    thread = threading.Thread(target=holder.receive, daemon=True, kwargs={
        "on_event": lambda ctx, ev: None, "partition_id": "0", "owner_level": 5, "starting_position": "-1"})
    thread.start()
    deadline = time.monotonic() + 20
    while broker.receiver_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    _, errors = receive(broker, 1, timeout=5, partition_id="0", owner_level=1)
    holder.close()
    thread.join(20)
    assert errors and "epoch" in str(errors[0]).lower()
