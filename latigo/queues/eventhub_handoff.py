"""Between the Event Hub receive thread and the executor's workers: the deliveries (the bounded hand-off
queue with its delay heap is latigo.queues.handoff, shared with the Kafka queue).

A delivery's `ack` lets its partition's checkpoint pass it; `nack(delay)` hands it to a worker again after
the delay from this consumer's heap (Event Hubs cannot redeliver one event), while it stays below the
checkpoint, so if this consumer stops first the partition's next owner delivers it.
"""

from __future__ import annotations

from azure.eventhub import EventData

from latigo.queues.handoff import DeliveryOwner, HandOff, PartitionDelivery
from latigo.queues.partition_tracker import PartitionTracker

__all__ = ["DeliveryOwner", "EventHubDelivery", "HandOff"]


class EventHubDelivery(PartitionDelivery):
    """One received event. `ack` lets the partition's checkpoint pass it; `nack` leaves it below the
    checkpoint, so the partition's next owner delivers it again (Event Hubs cannot redeliver one event:
    the retry waits in this consumer's delay heap)."""

    def __init__(self, queue: DeliveryOwner, tracker: PartitionTracker, event: EventData) -> None:
        # A received event always carries its position (the SDK types them optional for events being built).
        super().__init__(queue, tracker, int(event.sequence_number or 0), _raw_body(event))
        self.offset: str = str(event.offset)
        self.message_id = None if event.message_id is None else str(event.message_id)

    def __repr__(self) -> str:
        return f"<EventHubDelivery partition={self.partition_id} seq={self.sequence_number} task={self.message_id}>"


def _raw_body(event: EventData) -> bytes:
    try:
        body = event.body
    except ValueError:
        return b""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    try:
        parts = list(body)  # type: ignore[arg-type]  # a multi-section body is an iterable of sections
    except TypeError:
        return repr(body).encode()
    if all(isinstance(p, (bytes, bytearray, memoryview)) for p in parts):
        return b"".join(bytes(p) for p in parts)
    return repr(parts).encode()
