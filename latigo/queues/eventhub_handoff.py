"""Between the Event Hub receive thread and the executor's workers: the deliveries, and the bounded hand-off
queue with its delay heap.

A delivery's `ack` lets its partition's checkpoint pass it; `nack(delay)` hands it to a worker again after
the delay from this consumer's heap (Event Hubs cannot redeliver one event), while it stays below the
checkpoint, so if this consumer stops first the partition's next owner delivers it.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from azure.eventhub import EventData

from latigo.interfaces import Delivery
from latigo.queues.partition_tracker import PartitionTracker, Position
from latigo.types import Task


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

    def release(self, connection: Any = None, delay: float = 0.0) -> None:
        self._again(delay, retry=False)

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


class HandOff:
    """A bounded queue between the receive thread and the workers that can drop a lost partition's items,
    with a heap of deliveries handed back for later (retries wait there, not in a worker)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[EventHubDelivery] = deque()
        self._later: list[tuple[float, int, EventHubDelivery]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()

    def put_later(self, item: EventHubDelivery, delay: float) -> None:
        with self._changed:
            heapq.heappush(self._later, (time.monotonic() + max(0.0, delay), next(self._order), item))
            self._changed.notify_all()

    def put(self, item: EventHubDelivery, give_up: Callable[[], bool], on_wait: Callable[[], None]) -> bool:
        """Wait for room (calling `on_wait` every half second) unless `give_up()`; False when given up."""
        with self._changed:
            while len(self._items) >= self.capacity:
                if give_up():
                    return False
                on_wait()
                self._changed.wait(0.5)
            if give_up():
                return False
            self._items.append(item)
            self._changed.notify_all()
            return True

    def get(self, timeout: float) -> EventHubDelivery | None:
        """A due delivery from the heap first, else the next received one."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._changed:
            while True:
                now = time.monotonic()
                if self._later and self._later[0][0] <= now:
                    return heapq.heappop(self._later)[2]
                if self._items:
                    item = self._items.popleft()
                    self._changed.notify_all()
                    return item
                remaining = deadline - now
                if remaining <= 0:
                    return None
                if self._later:
                    remaining = min(remaining, self._later[0][0] - now)
                self._changed.wait(max(remaining, 0.001))

    def discard(self, tracker: PartitionTracker) -> int:
        with self._changed:
            kept = [item for item in self._items if item.tracker is not tracker]
            later = [entry for entry in self._later if entry[2].tracker is not tracker]
            dropped = len(self._items) - len(kept) + len(self._later) - len(later)
            self._items = deque(kept)
            self._later = later
            heapq.heapify(self._later)
            self._changed.notify_all()
            return dropped

    @property
    def delayed(self) -> int:
        with self._changed:
            return len(self._later)

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def __len__(self) -> int:
        return len(self._items)
