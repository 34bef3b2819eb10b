"""Azure Event Hubs as latigo's task queue (production), with partition ownership and checkpoints in our database.

Producing: latigo.queues.eventhub_producer. Liveness: latigo.queues.eventhub_watchdog. The deliveries and
the hand-off to the workers: latigo.queues.eventhub_handoff.

Consuming: the SDK's receive loop runs in its own thread, started on the first `get`, and hands events to the
executor's workers through a small bounded queue (backpressure instead of an unbounded buffer). The SDK's
callback never runs a task and never raises: a raising handler makes the SDK re-read the partition from its
checkpoint, so one bad event would loop forever. Undecodable events become Deliveries with `task=None` that
the executor dead-letters and acks. Acks checkpoint per partition only up to the highest event below which
every event is acknowledged (tasks finish out of order). When a partition moves to another executor, its
queued-but-unstarted deliveries are dropped and late acks stop checkpointing; the new owner replays from
the checkpoint and the ledger skips what was already done.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from azure.eventhub import EventData, EventHubConsumerClient, parse_connection_string
from sqlalchemy.engine import Engine

from latigo.errors import ConfigError
from latigo.errors import describe_exception as _describe
from latigo.interfaces import QueueGauges, TaskQueue
from latigo.queues.checkpoint_store import SqlCheckpointStore
from latigo.queues.eventhub_handoff import EventHubDelivery, HandOff
from latigo.queues.eventhub_producer import EventHubSender
from latigo.queues.eventhub_settings import EventHubSettings
from latigo.queues.eventhub_watchdog import ConsumerWatchdog
from latigo.queues.partition_tracker import PartitionTracker, Position
from latigo.secrets import register_secret
from latigo.types import Task

log = logging.getLogger(__name__)

START_OF_STREAM = "-1"
_REBALANCING = re.compile(r"link:stolen|higher epoch|epoch of", re.IGNORECASE)


class _WatchedStore(SqlCheckpointStore):
    """The checkpoint store as one consumer client sees it: each load-balancing renewal also tells the queue
    which partitions this client still owns, so a partition taken over by another executor stops handing
    out work at once rather than when the SDK gets round to closing it (the receive loop may be waiting
    for a free worker meanwhile)."""

    def __init__(self, engine: Engine, on_renewed: Callable[[set[str]], None]) -> None:
        super().__init__(engine)
        self._on_renewed = on_renewed

    def claim_ownership(self, ownership_list: Iterable[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
        claims = list(ownership_list)
        won = list(super().claim_ownership(claims, **kwargs))
        if claims and all(claim.get("owner_id") for claim in claims):  # a renewal round, not a release
            self._on_renewed({claim["partition_id"] for claim in won})
        return won


@dataclass
class _Run:
    """One consumer client, its receive thread and its partitions; replaced wholesale by a restart."""

    client: Any = None
    """The EventHubConsumerClient (made after the run, whose callbacks it needs)."""
    stopping: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    trackers: dict[str, PartitionTracker] = field(default_factory=dict)
    """Per partition, created on its first events. The SDK calls on_partition_close for a consumer before
    its successor on the same partition delivers anything (both on the receive thread), so the tracker
    present at close time always belongs to the consumer being closed."""
    claims: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    """on_partition_initialize minus on_partition_close per partition (they may interleave on a re-claim)."""


class EventHubTaskQueue(TaskQueue):
    Settings = EventHubSettings

    @classmethod
    def from_settings(cls, settings: EventHubSettings, components: Any) -> EventHubTaskQueue:
        return cls(settings, components.engine)

    def __init__(self, settings: EventHubSettings, engine: Engine) -> None:
        if not settings.connection_string:
            raise ConfigError("task_queue.connection_string is required for the eventhub task queue")
        register_secret(settings.connection_string)
        try:
            parsed = parse_connection_string(settings.connection_string)
        except (ValueError, TypeError, KeyError):
            raise ConfigError("task_queue.connection_string: not an Event Hub connection string") from None
        hub = settings.eventhub_name or parsed.eventhub_name
        if not hub:
            raise ConfigError("task_queue.eventhub_name is required: the connection string has no EntityPath")
        self.settings = settings
        self.eventhub_name: str = hub
        self.fully_qualified_namespace: str = parsed.fully_qualified_namespace
        self.consumer_group = settings.consumer_group
        self.store = SqlCheckpointStore(engine)
        self._lock = threading.RLock()
        self.sender = EventHubSender(settings.connection_string, hub, settings.send_timeout.total_seconds(),
                                     settings.send_retries, self._client_kwargs())
        self._handoff = HandOff[EventHubDelivery](settings.handoff_size)
        self._run: _Run | None = None
        self._watchdog: threading.Thread | None = None
        self._closed = threading.Event()
        self._last_activity = time.monotonic()
        self._errors: list[float] = []
        self.restarts = 0

    def _client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"retry_total": self.settings.send_retries}
        if self.settings.eventhub_name:
            kwargs["eventhub_name"] = self.settings.eventhub_name
        return kwargs

    # ---------------------------------------------------------------- consuming

    def get(self, timeout: float) -> EventHubDelivery | None:
        if self._closed.is_set():
            return None
        self._ensure_consumer()
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._closed.is_set():
            delivery = self._handoff.get(deadline - time.monotonic())
            if delivery is None:
                return None
            if not delivery.tracker.closed:
                return delivery
        return None

    @property
    def closing(self) -> bool:
        return self._closed.is_set()

    def deliver_later(self, delivery: EventHubDelivery, delay: float) -> None:
        self._handoff.put_later(delivery, delay)

    # ---------------------------------------------------------------- producing

    def put_many(self, tasks: Sequence[Task], connection: Any = None) -> int:
        """Send the tasks (see latigo.queues.eventhub_producer). `connection` is not used: the hub is not in
        latigo's database."""
        return self.sender.put_many(tasks)

    def probe(self) -> str:
        return f"event hub {self.eventhub_name} at {self.fully_qualified_namespace}: {self.sender.probe()}"

    def gauges(self) -> QueueGauges:
        return QueueGauges(waiting=len(self._handoff), in_queue=len(self._handoff) + self._handoff.delayed,
                           lag_by_partition=self.checkpoint_lag())

    def owned_partitions(self) -> list[str]:
        """Partitions the current consumer holds (as the SDK reported them)."""
        run = self._run
        if run is None:
            return []
        with self._lock:
            return sorted((pid for pid, n in run.claims.items() if n > 0), key=lambda p: (len(p), p))

    def checkpoint_lag(self) -> dict[str, int]:
        """Per owned partition: events received but not yet checkpointed (for metrics)."""
        run = self._run
        if run is None:
            return {}
        with self._lock:
            trackers = {pid: tracker for pid, tracker in run.trackers.items() if not tracker.closed}
        return {pid: tracker.lag() for pid, tracker in sorted(trackers.items())}

    def checkpoints(self) -> dict[str, Position]:
        """The stored checkpoints of this hub and consumer group, by partition."""
        rows = self.store.list_checkpoints(self.fully_qualified_namespace, self.eventhub_name, self.consumer_group)
        return {row["partition_id"]: Position(row["offset"], row["sequence_number"]) for row in rows}

    def write_checkpoint(self, tracker: PartitionTracker, position: Position) -> None:
        """Store a partition's checkpoint (called by Delivery.ack once the acknowledged prefix grew)."""
        checkpoint = {
            "fully_qualified_namespace": self.fully_qualified_namespace,
            "eventhub_name": self.eventhub_name,
            "consumer_group": self.consumer_group,
            "partition_id": tracker.partition_id,
            "offset": position.offset,
            "sequence_number": position.sequence_number,
        }
        try:
            tracker.write(position, lambda _: self.store.update_checkpoint(checkpoint))
        except Exception as exc:  # the next ack's checkpoint covers this one; the worst case is more replay
            log.warning("event hub checkpoint of partition %s not stored: %s", tracker.partition_id, _describe(exc))

    def _ensure_consumer(self) -> None:
        with self._lock:
            if self._watchdog is not None or self._closed.is_set():  # started once; restarts replace _run
                return
            self._start_run()
            self._watchdog = threading.Thread(target=ConsumerWatchdog(self).watch, name="latigo-eventhub-watchdog",
                                              daemon=True)
            self._watchdog.start()

    def _start_run(self) -> None:
        run = _Run()
        run.client = EventHubConsumerClient.from_connection_string(
            self.settings.connection_string,
            consumer_group=self.consumer_group,
            checkpoint_store=_WatchedStore(self.store.engine, partial(self._on_renewed, run)),
            load_balancing_interval=self.settings.load_balancing_interval.total_seconds(),
            partition_ownership_expiration_interval=self.settings.ownership_expiry.total_seconds(),
            **self._client_kwargs(),
        )
        run.thread = threading.Thread(target=self._receive, args=(run,), name="latigo-eventhub-receive", daemon=True)
        self._run = run
        self._last_activity = time.monotonic()
        self._errors.clear()
        run.thread.start()

    def _receive(self, run: _Run) -> None:
        try:
            run.client.receive_batch(
                on_event_batch=lambda context, events: self._on_events(run, context, events),
                max_batch_size=self.settings.prefetch,
                prefetch=self.settings.prefetch,
                starting_position=START_OF_STREAM,
                on_partition_initialize=lambda context: self._on_claimed(run, context),
                on_partition_close=lambda context, reason: self._on_closed(run, context, reason),
                on_error=lambda context, error: self._on_error(run, context, error),
            )
        except Exception as exc:
            if not run.stopping.is_set():
                log.error("event hub receive loop ended: %s", _describe(exc))

    # The SDK's callbacks: each catches everything, because a raising callback makes the SDK drop the
    # partition and re-read it from the checkpoint.

    def _on_events(self, run: _Run, context: Any, events: list[EventData]) -> None:
        try:
            if run is not self._run or not events:
                return
            tracker = self._tracker(run, context.partition_id)
            give_up = lambda: run.stopping.is_set() or tracker.closed  # noqa: E731
            for event in events:
                self._last_activity = time.monotonic()
                self._errors.clear()
                if not tracker.track(int(event.sequence_number or 0), str(event.offset)):
                    continue
                delivery = EventHubDelivery(self, tracker, event)
                if delivery.task is None:
                    log.warning("undecodable event on partition %s (seq %s): %s", tracker.partition_id,
                                delivery.sequence_number, delivery.error)
                if not self._handoff.put(delivery, give_up, self._touch):
                    return
        except Exception:
            log.exception("handling received events failed")

    def _tracker(self, run: _Run, pid: str) -> PartitionTracker:
        with self._lock:
            tracker = run.trackers.get(pid)
        if tracker is None:
            tracker = PartitionTracker(pid, self.checkpoints().get(pid))
            with self._lock:
                run.trackers[pid] = tracker
        return tracker

    def _touch(self) -> None:
        """Waiting for a free worker is activity too: the consumer is healthy, only the executor is busy."""
        self._last_activity = time.monotonic()

    def _on_claimed(self, run: _Run, context: Any) -> None:
        try:
            with self._lock:
                run.claims[context.partition_id] += 1
            self._last_activity = time.monotonic()
            log.info("claimed partition %s of %s", context.partition_id, self.eventhub_name)
        except Exception:
            log.exception("initializing partition %s failed", getattr(context, "partition_id", "?"))

    def _on_renewed(self, run: _Run, owned: set[str]) -> None:
        """A load-balancing round ended: partitions with work here but no longer owned are lost."""
        with self._lock:
            lost = [t for pid, t in run.trackers.items() if pid not in owned and not t.closed]
        for tracker in lost:  # kept in run.trackers (closed) until on_partition_close, see _Run.trackers
            unfinished = tracker.close()
            dropped = self._handoff.discard(tracker)
            log.info("lost partition %s to another executor: %d queued deliveries dropped, %d unfinished events "
                     "are left to the next owner", tracker.partition_id, dropped, unfinished)

    def _on_closed(self, run: _Run, context: Any, reason: Any) -> None:
        try:
            pid, why = context.partition_id, getattr(reason, "name", reason)
            with self._lock:
                run.claims[pid] -= 1
                tracker = run.trackers.pop(pid, None)
            if tracker is None or tracker.closed:
                log.info("released partition %s (%s)", pid, why)
                return
            unfinished = tracker.close()
            dropped = self._handoff.discard(tracker)
            log.info("released partition %s (%s): %d queued deliveries dropped, %d unfinished events are left "
                     "to the next owner", pid, why, dropped, unfinished)
        except Exception:
            log.exception("closing partition %s failed", getattr(context, "partition_id", "?"))

    def _on_error(self, run: _Run, context: Any, error: Exception) -> None:
        try:
            where = f"partition {context.partition_id}" if context is not None else "load balancing"
            text = _describe(error)
            if _REBALANCING.search(text):  # another executor took the partition over: normal balancing
                log.info("event hub %s: %s", where, text)
                return
            log.warning("event hub %s: %s", where, text)
            if run is self._run:
                self._errors.append(time.monotonic())
        except Exception:
            log.exception("handling an event hub error failed")

    # ---------------------------------------------------------------- liveness

    def restart(self, reason: str) -> None:
        """Replace the consumer client (its partitions are released and claimed again)."""
        with self._lock:
            if self._closed.is_set() or self._run is None:
                return
            old = self._run
            self._run = None
        log.warning("restarting the event hub consumer: %s", reason)
        self._stop_run(old)
        with self._lock:
            if self._closed.is_set():
                return
            self.restarts += 1
            self._start_run()

    def _stop_run(self, run: _Run, timeout: float = 30.0) -> None:
        run.stopping.set()
        self._handoff.wake()
        try:
            run.client.close()  # the SDK closes each partition (on_partition_close) and releases ownership
        except Exception as exc:
            log.warning("closing the event hub consumer: %s", _describe(exc))
        if run.thread is not None:
            run.thread.join(timeout)
            if run.thread.is_alive():
                log.warning("the old event hub receive thread did not stop within %.0fs; abandoning it", timeout)
        with self._lock:
            leftovers, run.trackers = list(run.trackers.values()), {}
        for tracker in leftovers:
            tracker.close()
            self._handoff.discard(tracker)

    def close(self) -> None:
        """Stop receiving (ownership is released for other executors) and close the clients."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            run, self._run = self._run, None
        if run is not None:
            self._stop_run(run)
        if self._watchdog is not None:
            self._watchdog.join(10)
        self.sender.close()


