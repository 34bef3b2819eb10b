"""Liveness of the Event Hub consumer: restart its client when it stays silent although the service holds
unread events for a partition it owns, when its receive thread died, or after repeated receive errors (the
SDK has been seen going quiet after idle periods and looping on reconnects)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from azure.eventhub import EventHubConsumerClient

from latigo.errors import describe_exception as _describe
from latigo.queues.eventhub_settings import EventHubSettings
from latigo.queues.partition_tracker import Position


class WatchedQueue(Protocol):
    """What the watchdog reads of the queue whose consumer it watches, and the one thing it does to it."""

    settings: EventHubSettings
    eventhub_name: str
    consumer_group: str
    _closed: threading.Event
    _run: Any
    _errors: list[float]
    _last_activity: float
    _handoff: Any

    def restart(self, reason: str) -> None: ...

    def owned_partitions(self) -> list[str]: ...

    def checkpoint_lag(self) -> dict[str, int]: ...

    def checkpoints(self) -> dict[str, Position]: ...

    def _client_kwargs(self) -> dict[str, Any]: ...

log = logging.getLogger("latigo.queues.eventhub")
ERRORS_BEFORE_RESTART = 5
STATS_LOG_INTERVAL = 60.0


class ConsumerWatchdog:
    """Watches one EventHubTaskQueue's consumer from a thread of its own."""

    def __init__(self, queue: WatchedQueue) -> None:
        self.queue = queue

    def watch(self) -> None:
        silence = self.queue.settings.watchdog_silence.total_seconds()
        period = min(5.0, max(0.2, silence / 4))
        last_stats, last_owned = time.monotonic(), None
        while not self.queue._closed.wait(period):
            try:
                reason = self._restart_reason(silence)
                if reason:
                    self.queue.restart(reason)
                owned = self.queue.owned_partitions()
                if owned != last_owned:
                    log.info("event hub %s: owning partitions %s", self.queue.eventhub_name, owned)
                    last_owned = owned
                if time.monotonic() - last_stats >= STATS_LOG_INTERVAL:
                    last_stats = time.monotonic()
                    if owned:
                        log.info("event hub %s: checkpoint lag by partition %s, hand-off %d", self.queue.eventhub_name,
                                 self.queue.checkpoint_lag(), len(self.queue._handoff))
            except Exception:
                log.exception("event hub watchdog check failed")

    def _restart_reason(self, silence: float) -> str | None:
        run = self.queue._run
        if run is None or self.queue._closed.is_set():
            return None
        if run.thread is not None and not run.thread.is_alive() and not run.stopping.is_set():
            return "the receive loop ended"
        now = time.monotonic()
        recent = [t for t in self.queue._errors if now - t <= silence]
        if len(recent) >= ERRORS_BEFORE_RESTART:
            return f"{len(recent)} receive errors without an event in between"
        if now - self.queue._last_activity < silence:
            return None
        unread = self._unread_partitions()
        self.queue._last_activity = now  # look again after another silent period
        if unread:
            return f"no events for {silence:.0f}s although partitions {unread} have unread events"
        return None

    def _unread_partitions(self) -> list[str]:
        """Owned partitions where the service holds events beyond what this consumer received."""
        run, owned = self.queue._run, self.queue.owned_partitions()
        if run is None or not owned:
            return []
        latest = self._last_enqueued(owned)
        if latest is None:
            return owned  # the service cannot be asked either: a fresh client is the best bet
        stored = self.queue.checkpoints()
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
            queue = self.queue
            client = EventHubConsumerClient.from_connection_string(
                queue.settings.connection_string, consumer_group=queue.consumer_group, **queue._client_kwargs()
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
        thread.join(self.queue.settings.send_timeout.total_seconds())
        if thread.is_alive() or len(result) < len(partitions):
            return None
        return dict(result)
