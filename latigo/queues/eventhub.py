"""Azure Event Hubs as latigo's task queue (production), with partition ownership and checkpoints in our database.

Producing: tasks are JSON events, batched up to the service's size limit, partition key = model name (one
model's windows stay in order on one partition), message id = task id (a retried send can duplicate an
event; the executor's ledger dedupes by task id). A send that still fails after its retries raises
TransientError: nothing is dropped silently.

Consuming: the SDK's receive loop runs in its own thread, started on the first `get`, and hands events to the
executor's workers through a small bounded queue (backpressure instead of an unbounded buffer). The SDK's
callback never runs a task and never raises: a raising handler makes the SDK re-read the partition from its
checkpoint, so one bad event would loop forever. Undecodable events become Deliveries with `task=None` that
the executor dead-letters and acks. Acks checkpoint per partition only up to the highest event below which
every event is acknowledged (tasks finish out of order). When a partition moves to another executor, its
queued-but-unstarted deliveries are dropped and late acks stop checkpointing; the new owner replays from
the checkpoint and the ledger skips what was already done.

Liveness: a watchdog restarts the consumer client when it stays silent although the service holds unread
events for a partition it owns, when its thread died, or after repeated receive errors (the SDK has been
seen going quiet after idle periods and looping on reconnects).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

from azure.eventhub import EventData, EventHubConsumerClient, EventHubProducerClient, parse_connection_string
from sqlalchemy.engine import Engine

from latigo.errors import ConfigError, PermanentError, TransientError
from latigo.errors import describe_exception as _describe
from latigo.interfaces import Delivery, QueueGauges, TaskQueue
from latigo.queues.checkpoint_store import SqlCheckpointStore
from latigo.queues.partition_tracker import PartitionTracker, Position
from latigo.secrets import register_secret
from latigo.types import Task

log = logging.getLogger(__name__)

START_OF_STREAM = "-1"
ERRORS_BEFORE_RESTART = 5
STATS_LOG_INTERVAL = 60.0
_REBALANCING = re.compile(r"link:stolen|higher epoch|epoch of", re.IGNORECASE)


@dataclass
class EventHubSettings:
    connection_string: str = ""
    """The namespace's or hub's connection string (LATIGO_INTERNAL_EVENT_HUB); masked everywhere."""
    consumer_group: str = "$Default"
    eventhub_name: str | None = None
    """Needed only when the connection string has no EntityPath."""
    prefetch: int = field(default=20, metadata={"min": 1})
    """Events the SDK buffers per partition; small, because executors work slowly and rebalance."""
    load_balancing_interval: timedelta = timedelta(seconds=10)
    ownership_expiry: timedelta = timedelta(seconds=60)
    """A crashed executor's partitions are claimed by others after this long."""
    handoff_size: int = field(default=16, metadata={"min": 1})
    """Received events waiting for a worker; the receive loop waits when it is full."""
    send_retries: int = field(default=3, metadata={"min": 0})
    send_timeout: timedelta = timedelta(seconds=60)
    """Longest wait for one batch to be sent, retries included; also bounds the watchdog's service queries."""
    watchdog_silence: timedelta = timedelta(minutes=5)
    """Restart the consumer after this long without events while the service holds unread ones."""


class EventHubDelivery(Delivery):
    """One received event. `ack` lets the partition's checkpoint pass it; `nack` leaves it below the
    checkpoint, so the partition's next owner delivers it again."""

    def __init__(self, queue: EventHubTaskQueue, tracker: PartitionTracker, event: EventData) -> None:
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
        self._producer: EventHubProducerClient | None = None
        self._producer_lock = threading.Lock()
        self._handoff = HandOff(settings.handoff_size)
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

    # ---------------------------------------------------------------- producing

    def put_many(self, tasks: Sequence[Task], connection: Any = None) -> int:
        """Send the tasks, batched per model; raises TransientError if a batch could not be sent.

        Batches sent before a failure stay sent (the caller retries the whole call; the ledger dedupes).
        `connection` is not used: the hub is not in latigo's database."""
        if not tasks:
            return 0
        by_model: dict[str, list[Task]] = defaultdict(list)
        for task in tasks:
            by_model[task.model].append(task)
        sent = 0
        with self._producer_lock:
            for model, group in by_model.items():
                sent += self._send_model(model, group)
        return sent

    def _send_model(self, model: str, tasks: list[Task]) -> int:
        producer = self._producer_client()
        sent, batch, in_batch = 0, None, 0
        for task in tasks:
            event = EventData(task.to_json())
            event.message_id = task.task_id
            event.content_type = "application/json"
            if batch is None:
                batch, in_batch = self._new_batch(producer, model), 0
            try:
                batch.add(event)
                in_batch += 1
                continue
            except ValueError:
                if in_batch == 0:
                    raise PermanentError(f"task {task.task_id} does not fit in an event hub batch") from None
            self._send(producer, batch, model, in_batch)
            sent += in_batch
            batch = self._new_batch(producer, model)
            batch.add(event)
            in_batch = 1
        if batch is not None and in_batch:
            self._send(producer, batch, model, in_batch)
            sent += in_batch
        return sent

    def _new_batch(self, producer: EventHubProducerClient, model: str) -> Any:
        try:
            return producer.create_batch(partition_key=model)
        except Exception as exc:
            self._reset_producer()
            raise TransientError(f"event hub {self.eventhub_name}: cannot open a sender: {_describe(exc)}") from None

    def _send(self, producer: EventHubProducerClient, batch: Any, model: str, count: int) -> None:
        try:
            producer.send_batch(batch, timeout=self.settings.send_timeout.total_seconds())
        except Exception as exc:
            self._reset_producer()
            raise TransientError(
                f"event hub {self.eventhub_name}: sending {count} tasks of model {model!r} failed after "
                f"{self.settings.send_retries + 1} attempts: {_describe(exc)}"
            ) from None

    def _producer_client(self) -> EventHubProducerClient:
        if self._producer is None:
            self._producer = EventHubProducerClient.from_connection_string(
                self.settings.connection_string, **self._client_kwargs()
            )
        return self._producer

    def _reset_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close()
            except Exception as exc:
                log.debug("closing the event hub producer: %s", _describe(exc))

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

    def probe(self) -> str:
        """Ask the service for the hub's partitions (a management request over AMQP)."""
        with self._producer_lock:
            partitions = self._producer_client().get_partition_ids()
        return f"event hub {self.eventhub_name} at {self.fully_qualified_namespace}: {len(partitions)} partitions"

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
            self._watchdog = threading.Thread(target=self._watch, name="latigo-eventhub-watchdog", daemon=True)
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

    def _watch(self) -> None:
        silence = self.settings.watchdog_silence.total_seconds()
        period = min(5.0, max(0.2, silence / 4))
        last_stats, last_owned = time.monotonic(), None
        while not self._closed.wait(period):
            try:
                reason = self._restart_reason(silence)
                if reason:
                    self.restart(reason)
                owned = self.owned_partitions()
                if owned != last_owned:
                    log.info("event hub %s: owning partitions %s", self.eventhub_name, owned)
                    last_owned = owned
                if time.monotonic() - last_stats >= STATS_LOG_INTERVAL:
                    last_stats = time.monotonic()
                    if owned:
                        log.info("event hub %s: checkpoint lag by partition %s, hand-off %d", self.eventhub_name,
                                 self.checkpoint_lag(), len(self._handoff))
            except Exception:
                log.exception("event hub watchdog check failed")

    def _restart_reason(self, silence: float) -> str | None:
        run = self._run
        if run is None or self._closed.is_set():
            return None
        if run.thread is not None and not run.thread.is_alive() and not run.stopping.is_set():
            return "the receive loop ended"
        now = time.monotonic()
        recent = [t for t in self._errors if now - t <= silence]
        if len(recent) >= ERRORS_BEFORE_RESTART:
            return f"{len(recent)} receive errors without an event in between"
        if now - self._last_activity < silence:
            return None
        unread = self._unread_partitions()
        self._last_activity = now  # look again after another silent period
        if unread:
            return f"no events for {silence:.0f}s although partitions {unread} have unread events"
        return None

    def _unread_partitions(self) -> list[str]:
        """Owned partitions where the service holds events beyond what this consumer received."""
        run, owned = self._run, self.owned_partitions()
        if run is None or not owned:
            return []
        latest = self._last_enqueued(owned)
        if latest is None:
            return owned  # the service cannot be asked either: a fresh client is the best bet
        stored = self.checkpoints()
        unread = []
        for pid in owned:
            tracker = run.trackers.get(pid)
            seen = tracker.highest_received if tracker is not None else None
            if seen is None:
                seen = stored[pid].sequence_number if pid in stored else -1
            if latest.get(pid, -1) > seen:
                unread.append(pid)
        return unread

    def _last_enqueued(self, partitions: list[str]) -> dict[str, int] | None:
        """The service's last sequence number per partition, asked by a fresh client in a thread of its own
        (a query over a dead connection can hang; the watchdog must not). None when it cannot be had."""
        result: dict[str, int] = {}

        def ask() -> None:
            client = EventHubConsumerClient.from_connection_string(
                self.settings.connection_string, consumer_group=self.consumer_group, **self._client_kwargs()
            )
            try:
                for pid in partitions:
                    result[pid] = client.get_partition_properties(pid)["last_enqueued_sequence_number"]
            except Exception as exc:
                log.warning("event hub watchdog: reading partition properties failed: %s", _describe(exc))
            finally:
                client.close()

        thread = threading.Thread(target=ask, name="latigo-eventhub-probe", daemon=True)
        thread.start()
        thread.join(self.settings.send_timeout.total_seconds())
        if thread.is_alive() or len(result) < len(partitions):
            return None
        return dict(result)

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
        with self._producer_lock:
            self._reset_producer()


