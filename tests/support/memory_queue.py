"""An in-memory TaskQueue: the contract without a transport, for fast executor tests (and the shape a
broker-backed queue has: nothing it settles joins a database transaction).

Given a `ledger` (an engine of its own on the executor's database: other connections than the
executor's), every settlement records what the ledger had committed at that moment, read on that
separate connection: what a broker's consumer could rely on once it has acked, nacked or released."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from latigo.interfaces import Delivery, QueueGauges, TaskQueue
from latigo.storage.tables import DEAD_LETTERS, TASKS
from latigo.types import Task


@dataclass(frozen=True)
class Committed:
    """A task's ledger row as another connection saw it (None fields: no row), and the dead letters kept
    of its message."""

    state: str | None
    attempts: int | None
    error: str | None
    dead_letters: int


@dataclass(frozen=True)
class Settlement:
    action: str  # ack | nack | release
    task_id: str
    delay: float
    committed: Committed | None
    """What the ledger had committed when the delivery was settled (None without a ledger)."""


def committed_row(ledger: Engine, task_id: str) -> Committed:
    with ledger.connect() as connection:
        row = connection.execute(sa.select(TASKS.c.state, TASKS.c.attempts, TASKS.c.error)
                                 .where(TASKS.c.task_id == task_id)).first()
        letters = connection.execute(sa.select(sa.func.count()).select_from(DEAD_LETTERS)
                                     .where(DEAD_LETTERS.c.message_id == task_id)).scalar_one()
    if row is None:
        return Committed(None, None, None, letters)
    return Committed(row.state, row.attempts, row.error, letters)


class MemoryDelivery(Delivery):
    def __init__(self, queue: MemoryQueue, task: Task, attempt: int) -> None:
        self.queue, self.task, self.attempt = queue, task, attempt
        self.body, self.error, self.message_id = task.to_json().encode(), "", task.task_id
        self.settled: str | None = None

    def ack(self, connection: Any = None) -> None:
        self._settle("ack", 0.0)

    def nack(self, delay: float = 0.0, connection: Any = None) -> None:
        self._settle("nack", delay)
        self.queue.push(self.task, self.attempt + 1, delay)

    def release(self, connection: Any = None, delay: float = 0.0) -> None:
        self._settle("release", delay)
        self.queue.push(self.task, self.attempt, delay)

    def _settle(self, action: str, delay: float) -> None:
        self.settled = action
        ledger = self.queue.ledger
        committed = committed_row(ledger, self.task.task_id) if ledger is not None else None
        self.queue.settlements.append(Settlement(action, self.task.task_id, delay, committed))


class MemoryQueue(TaskQueue):
    def __init__(self, ledger: Engine | None = None) -> None:
        self._heap: list[tuple[float, int, Task, int]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()
        self.ledger = ledger
        self.settlements: list[Settlement] = []

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
