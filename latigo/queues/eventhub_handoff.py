"""Between the Event Hub receive thread and the executor's workers: the deliveries (the bounded hand-off
queue with its delay heap is latigo.queues.handoff, shared with the Kafka queue).

A delivery's `ack` lets its partition's checkpoint pass it; `nack(delay)` hands it to a worker again after
the delay from this consumer's heap (Event Hubs cannot redeliver one event), while it stays below the
checkpoint, so if this consumer stops first the partition's next owner delivers it.
"""

from __future__ import annotations

from typing import Any, Protocol

from azure.eventhub import EventData

from latigo.interfaces import Delivery
from latigo.queues.handoff import HandOff
from latigo.queues.partition_tracker import PartitionTracker, Position
from latigo.types import Task

__all__ = ["DeliveryOwner", "EventHubDelivery", "HandOff"]


class DeliveryOwner(Protocol):
    """What a delivery needs from the queue it came from."""

    @property
    def closing(self) -> bool: ...

    def deliver_later(self, delivery: EventHubDelivery, delay: float) -> None: ...

    def write_checkpoint(self, tracker: PartitionTracker, position: Position) -> None: ...


class EventHubDelivery(Delivery):
    """One received event. `ack` lets the partition's checkpoint pass it; `nack` leaves it below the
    checkpoint, so the partition's next owner delivers it again."""

    def __init__(self, queue: DeliveryOwner, tracker: PartitionTracker, event: EventData) -> None:
        self._queue, self.tracker = queue, tracker
        self.partition_id = tracker.partition_id
        # A received event always carries its position (the SDK types them optional for events being built).
        self.sequence_number: int = int(event.sequence_number or 0)
        self.offset: str = str(event.offset)
        self.message_id = None if event.message_id is None else str(event.message_id)
        self.attempt = 1
        self.task: Task | None = None
        self.error = ""
        self.body = _raw_body(event)
        self._settled = False
        try:
            self.task = Task.from_json(self.body)
        except Exception as exc:  # whatever is wrong with it, it becomes a dead letter, never a crash
            self.error = str(exc) or type(exc).__name__

    def ack(self, connection: Any = None) -> None:
        if self._settled:
            return
        self._settled = True
        position = self.tracker.ack(self.sequence_number)
        if position is not None:
            self._queue.write_checkpoint(self.tracker, position)

    def nack(self, delay: float = 0.0, connection: Any = None) -> None:
        """Hand it to a worker again after `delay` seconds, from this consumer's delay heap (Event Hubs
        cannot redeliver one event). It stays below the checkpoint meanwhile, so if this consumer stops
        first, the partition's next owner delivers it."""
        self._again(delay, retry=True)

    def release(self, connection: Any = None) -> None:
        self._again(0.0, retry=False)

    def _again(self, delay: float, retry: bool) -> None:
        if self._settled:
            return
        self._settled = True
        if self.tracker.closed or self._queue.closing:
            return
        self._settled = False
        if retry:
            self.attempt += 1
        self._queue.deliver_later(self, delay)

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
