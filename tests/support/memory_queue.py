"""An in-memory TaskQueue: the contract without a transport, for fast executor tests (and the shape a
broker-backed queue has: nothing it settles joins a database transaction)."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Sequence
from typing import Any

from latigo.interfaces import Delivery, QueueGauges, TaskQueue
from latigo.types import Task


class MemoryDelivery(Delivery):
    def __init__(self, queue: MemoryQueue, task: Task, attempt: int) -> None:
        self.queue, self.task, self.attempt = queue, task, attempt
        self.body, self.error, self.message_id = task.to_json().encode(), "", task.task_id
        self.settled: str | None = None

    def ack(self, connection: Any = None) -> None:
        self.settled = "ack"
        self.queue.history.append(("ack", self.task.task_id, 0.0))

    def nack(self, delay: float = 0.0, connection: Any = None) -> None:
        self.settled = "nack"
        self.queue.history.append(("nack", self.task.task_id, delay))
        self.queue.push(self.task, self.attempt + 1, delay)

    def release(self, connection: Any = None, delay: float = 0.0) -> None:
        self.settled = "release"
        self.queue.history.append(("release", self.task.task_id, delay))
        self.queue.push(self.task, self.attempt, delay)


class MemoryQueue(TaskQueue):
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Task, int]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()
        self.history: list[tuple[str, str, float]] = []

    def push(self, task: Task, attempt: int, delay: float) -> None:
        with self._changed:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._order), task, attempt))
            self._changed.notify_all()

    def put_many(self, tasks: Sequence[Task], connection: Any = None) -> int:
        for task in tasks:
            self.push(task, 1, 0.0)
        return len(tasks)

    def get(self, timeout: float) -> MemoryDelivery | None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    _, _, task, attempt = heapq.heappop(self._heap)
                    return MemoryDelivery(self, task, attempt)
                wait = deadline - now
                if self._heap:
                    wait = min(wait, self._heap[0][0] - now)
                if deadline <= now:
                    return None
                self._changed.wait(max(wait, 0.001))

    def gauges(self) -> QueueGauges:
        with self._changed:
            return QueueGauges(waiting=sum(1 for due, *_ in self._heap if due <= time.monotonic()),
                               in_queue=len(self._heap))
