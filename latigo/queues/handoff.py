"""The bounded hand-off between a broker's receive thread and the executor's workers, with a heap of
deliveries handed back for later, shared by the Event Hub and Kafka queues.

A receive thread puts what it received; workers take it. A retry (`nack(delay)`) waits on the heap, not in
a worker and not in the partition: the partition's other messages keep flowing meanwhile. When a partition
moves to another consumer, its items (queued or delayed) are dropped at once: the next owner replays them
from the last commit.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from latigo.interfaces import Delivery
from latigo.queues.partition_tracker import PartitionTracker, Position
from latigo.types import Task


class Tracked(Protocol):
    """An item of the hand-off: it belongs to one partition's tracker."""

    tracker: PartitionTracker


Item = TypeVar("Item", bound=Tracked)


class DeliveryOwner(Protocol):
    """What a partition's delivery needs from the queue it came from."""

    @property
    def closing(self) -> bool: ...

    def deliver_later(self, delivery: Any, delay: float) -> None: ...

    def write_checkpoint(self, tracker: PartitionTracker, position: Position) -> None: ...


class PartitionDelivery(Delivery):
    """One message of a partitioned broker. `ack` lets the partition's checkpoint (commit) pass it once every
    message before it is settled too; `nack(delay)` hands it to a worker again after the delay from the
    consumer's heap, while it stays below the checkpoint, so if this consumer stops first (or loses the
    partition) the partition's next owner delivers it."""

    def __init__(self, queue: DeliveryOwner, tracker: PartitionTracker, sequence_number: int, body: bytes) -> None:
        self._queue, self.tracker = queue, tracker
        self.partition_id = tracker.partition_id
        self.sequence_number = sequence_number
        self.attempt = 1
        self.task: Task | None = None
        self.error = ""
        self.body = body
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
        """Hand it to a worker again after `delay` seconds, from this consumer's delay heap."""
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


class HandOff(Generic[Item]):
    """A bounded queue between the receive thread and the workers that can drop a lost partition's items,
    with a heap of deliveries handed back for later (retries wait there, not in a worker)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[Item] = deque()
        self._later: list[tuple[float, int, Item]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()

    def put_later(self, item: Item, delay: float) -> None:
        with self._changed:
            heapq.heappush(self._later, (time.monotonic() + max(0.0, delay), next(self._order), item))
            self._changed.notify_all()

    def put(self, item: Item, give_up: Callable[[], bool], on_wait: Callable[[], None]) -> bool:
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

    def room(self) -> int:
        """How many more items fit now (a receive thread that must not block asks before it fetches)."""
        with self._changed:
            return max(0, self.capacity - len(self._items))

    def wait_for_room(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a worker to take an item; whether there is room now."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._items) >= self.capacity:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def extend(self, items: list[Item]) -> None:
        """Append without waiting (the caller fetched no more than `room()` allowed)."""
        if not items:
            return
        with self._changed:
            self._items.extend(items)
            self._changed.notify_all()

    def get(self, timeout: float) -> Item | None:
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
