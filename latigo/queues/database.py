"""The database task queue: the embedded default, on PostgreSQL or SQLite.

A claim is a lease: claiming moves the row's `available_at` into the future, so
a task whose executor died simply becomes visible again when the lease runs out.
Acks, nacks and renewals only touch the row when it still carries the claimer's
(owner, delivery count): an executor whose lease expired cannot ack someone
else's delivery. PostgreSQL claims with FOR UPDATE SKIP LOCKED and wakes idle
executors with LISTEN/NOTIFY; SQLite claims inside a short BEGIN IMMEDIATE.
The claim also starts the task in the ledger, and the executor's finish removes
the row in the transaction that stores the results: two transactions per task.

The queue table belongs to the ledger, whose hot statements join it to `tasks`:
every statement run here is the ledger's (latigo.storage.ledger_statements), and
this module is the transport around them: leases, wake-ups and deliveries.
"""

from __future__ import annotations

import logging
import os
import select as selectlib
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy.engine import Connection, Engine

from latigo.errors import describe_exception as _describe
from latigo.interfaces import Delivery, QueueGauges, Settlement, TaskQueue, UnitOfWork
from latigo.lifecycle import TaskLifecycle
from latigo.storage.db import is_sqlite, utc_from_db, write_transaction
from latigo.storage.faults import is_infrastructure_fault
from latigo.storage.ledger_statements import NOTIFY, insert_queue_rows, queue_counts, queue_size, queue_statements
from latigo.types import Started, Task

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "latigo_tasks"


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class DatabaseDelivery(Delivery):
    """A claimed queue row. Settling it touches the row only while it still carries this claim (owner and
    delivery count), so an executor whose lease expired cannot settle another executor's delivery."""

    def __init__(self, queue: DatabaseTaskQueue, task_id: str, body: str, deliveries: int,
                 started: Started | None = None) -> None:
        self._queue, self.task_id, self.attempt = queue, task_id, deliveries
        self.message_id = task_id
        self.body = body.encode()
        self.error = ""
        self.task: Task | None = None
        self.started = started
        self._finished = False
        self._settling = False
        try:
            self.task = Task.from_json(body)
        except ValueError as exc:
            self.error = str(exc)

    def _claim(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "owner": self._queue.owner, "deliveries": self.attempt}

    def settle(self, settlement: Settlement, unit: UnitOfWork) -> None:
        """Inside the ledger's transaction: the message's removal (or return) commits with the task's state."""
        settlement.apply(self, unit.connection)

    def ack(self, connection: Connection | None = None) -> None:
        self._finish(self._queue.sql.ack, self._claim(), connection)

    def nack(self, delay: float = 0.0, connection: Connection | None = None) -> None:
        self._finish(self._queue.sql.nack, {**self._claim(), **self._queue.after(delay)}, connection)

    def release(self, connection: Connection | None = None, delay: float = 0.0) -> None:
        """Back after `delay`, and this delivery does not count against the delivery cap."""
        self._finish(self._queue.sql.release, {**self._claim(), **self._queue.after(delay)}, connection)

    def renew(self) -> None:
        if not self._finished and not self._settling:
            self._queue.execute(self._queue.sql.renew, {**self._claim(), **self._queue.after(self._queue.lease)})

    def _finish(self, statement: Any, params: dict[str, Any], connection: Connection | None) -> None:
        """Settle the row. Inside the caller's transaction the delivery is final only if that transaction
        commits: when the commit fails (a connection lost in COMMIT), a later release must still act, so the
        delivery is not marked finished there (a second settle after a commit finds the row gone and says so)."""
        if self._finished:
            return
        if connection is not None:
            self._settling = True
            changed = connection.execute(statement, params).rowcount
        else:
            changed = self._queue.execute(statement, params)
            self._finished = True
        if changed == 0:
            log.warning("task %s: lease was lost before it was settled (another executor may have it)", self.task_id)


class DatabaseTaskQueue(TaskQueue):
    @dataclass
    class Settings:
        lease: timedelta = timedelta(seconds=60)
        """How long a claim lasts without renewal; the executor renews while it works."""
        poll_interval: timedelta = timedelta(seconds=1)
        """Fallback polling when no notification arrives (and SQLite's only wake-up)."""
        listen: bool = True
        """PostgreSQL: wake idle executors with LISTEN/NOTIFY."""

    @classmethod
    def from_settings(cls, settings: Settings, components: Any) -> DatabaseTaskQueue:
        return cls(components.engine, settings, lifecycle=components.lifecycle)

    def __init__(self, engine: Engine, settings: Settings | None = None, owner: str | None = None,
                 lifecycle: TaskLifecycle | None = None) -> None:
        self.engine = engine
        self.settings = settings or self.Settings()
        self.lease = self.settings.lease.total_seconds()
        self.owner = owner or default_owner()
        self.lifecycle = lifecycle
        """When given, a claim also starts the task in the ledger, in the same transaction."""
        self._sqlite = is_sqlite(engine)
        self.sql = queue_statements(engine)
        self._wakeup = threading.Condition()
        self._listener: _Listener | None = None
        self._notifications = 0
        self._closed = False

    # ------------------------------------------------------------------ clock
    def after(self, seconds: float) -> dict[str, Any]:
        """The parameters for "now + seconds": on the database clock for PostgreSQL (executors on several
        hosts agree), this host's for SQLite (a single host)."""
        if self._sqlite:
            now = datetime.now(timezone.utc)
            return {"now": now, "until": now + timedelta(seconds=seconds)}
        return {"seconds": seconds}

    def execute(self, statement: Any, params: dict[str, Any] | None = None) -> int:
        with write_transaction(self.engine) as connection:
            return connection.execute(statement, params or {}).rowcount

    # ------------------------------------------------------------------ producing
    def put_many(self, tasks: Sequence[Task], connection: Connection | None = None) -> int:
        if not tasks:
            return 0
        if connection is None:
            with write_transaction(self.engine) as own:
                return self._insert(own, tasks)
        return self._insert(connection, tasks)

    def _insert(self, connection: Connection, tasks: Sequence[Task]) -> int:
        now = datetime.now(timezone.utc)
        rows = [{"task_id": t.task_id, "body": t.to_json(), "enqueued_at": now, "deliveries": 0,
                 "available_at": now} for t in tasks]
        new = insert_queue_rows(connection, rows)
        if new and not self._sqlite:
            connection.execute(NOTIFY, {"channel": NOTIFY_CHANNEL})
        return len(new)

    # ------------------------------------------------------------------ consuming
    def get(self, timeout: float) -> DatabaseDelivery | None:
        deadline = time.monotonic() + max(timeout, 0.0)
        self._ensure_listener()
        while not self._closed:
            seen = self._notifications  # a notification after this point must not be slept through
            delivery = self._claim_and_start()
            if delivery is not None:
                return delivery
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with self._wakeup:
                if self._notifications == seen:
                    self._wakeup.wait(min(remaining, self.settings.poll_interval.total_seconds()))
        return None

    def _claim_and_start(self) -> DatabaseDelivery | None:
        if self.lifecycle is None:
            return self._claim(start=False)
        try:
            return self._claim(start=True)
        except Exception as exc:
            if is_infrastructure_fault(exc):
                raise
            # The ledger refused the start (a value it cannot hold): claim without it, and let the executor
            # find out on its own and dead-letter the message, instead of failing this claim forever.
            log.warning("the ledger refused to start a claimed task (%s); handing it over unstarted", _describe(exc))
            return self._claim(start=False)

    def _claim(self, start: bool) -> DatabaseDelivery | None:
        params = {"owner": self.owner, **self.after(self.lease)}
        with write_transaction(self.engine) as connection:
            started = None
            if start and self.lifecycle is not None and not self._sqlite:
                claimed = self.lifecycle.claim_and_start(connection, params, self.owner)
                if claimed is None:
                    return None
                row, started = claimed
            else:
                row = connection.execute(self.sql.claim, params).first()
                if row is None:
                    return None
            delivery = DatabaseDelivery(self, row.task_id, row.body, row.deliveries, started)
            if start and started is None and delivery.task is not None and self.lifecycle is not None:
                delivery.started = self.lifecycle.start(connection, delivery.task, self.owner)
        return delivery

    def gauges(self) -> QueueGauges:
        with self.engine.connect() as connection:
            waiting, total, enqueued = queue_counts(connection)
        oldest = utc_from_db(enqueued)
        age = (datetime.now(timezone.utc) - oldest).total_seconds() if oldest else None
        return QueueGauges(waiting=waiting, in_queue=total, oldest_age_seconds=age)

    def size(self) -> int:
        """Every task still in the queue, leased ones included."""
        with self.engine.connect() as connection:
            return queue_size(connection)

    # ------------------------------------------------------------------ wake-ups
    def _ensure_listener(self) -> None:
        if self._sqlite or not self.settings.listen or self._listener is not None:
            return
        with self._wakeup:
            if self._listener is None:
                self._listener = _Listener(self.engine, self._wake)
                self._listener.start()

    def _wake(self) -> None:
        with self._wakeup:
            self._notifications += 1
            self._wakeup.notify_all()

    def close(self) -> None:
        self._closed = True
        self._wake()
        if self._listener is not None:
            self._listener.stop()


class _Listener(threading.Thread):
    """LISTENs on a dedicated connection and calls `on_notify` for every notification; a lost
    connection is re-opened (polling keeps executors working meanwhile)."""

    def __init__(self, engine: Engine, on_notify: Any) -> None:
        super().__init__(name="latigo-queue-listener", daemon=True)
        self._engine, self._on_notify = engine, on_notify
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:  # the database may be restarting; polling covers the gap
                log.warning("task notifications unavailable (%s); polling meanwhile", type(exc).__name__)
                self._stop.wait(5)

    def _listen(self) -> None:
        raw = self._engine.raw_connection()
        try:
            dbapi: Any = raw.driver_connection  # psycopg2's connection: LISTEN needs its poll() and notifies
            dbapi.autocommit = True
            with dbapi.cursor() as cursor:
                cursor.execute(f"LISTEN {NOTIFY_CHANNEL}")
            while not self._stop.is_set():
                if selectlib.select([dbapi], [], [], 1.0)[0]:
                    dbapi.poll()
                    if dbapi.notifies:
                        dbapi.notifies.clear()
                        self._on_notify()
        finally:
            raw.invalidate()
