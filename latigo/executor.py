"""The executor: worker threads taking tasks from the queue, each run through the task pipeline
(latigo.task_pipeline), with lease renewal, queue gauges and a graceful stop. `concurrency` of them may
run a model at once; the spare workers claim and store meanwhile.

A loop over ports only — the queue, the model execution provider, the task lifecycle and the sinks;
it has no database engine of its own. SIGTERM stops claiming; in-flight tasks get `shutdown_timeout` to
finish and the rest are released. After a database fault a worker backs off, and /readyz says not ready
until the database answers again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from latigo.interfaces import Delivery, ModelExecutionProvider, TaskQueue
from latigo.lifecycle import TaskLifecycle
from latigo.observability import CHECKPOINT_LAG, QUEUE_BACKLOG, QUEUE_LAG, QUEUE_OLDEST_AGE
from latigo.settings import ExecutorSettings
from latigo.settlement import ExecutorStats, Outcome, TaskReleased
from latigo.sinks import SinkSet
from latigo.storage.faults import is_infrastructure_fault
from latigo.task_pipeline import TaskPipeline

log = logging.getLogger(__name__)

__all__ = ["Executor", "ExecutorStats", "Outcome"]


class Executor:
    def __init__(
        self,
        settings: ExecutorSettings,
        queue: TaskQueue,
        execution: ModelExecutionProvider,
        lifecycle: TaskLifecycle,
        outputs: Sequence[str],
        sinks: SinkSet | None = None,
        name: str | None = None,
    ) -> None:
        self.settings, self.queue, self.execution, self.lifecycle = settings, queue, execution, lifecycle
        self.sinks = sinks or SinkSet([])
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.stopping = threading.Event()
        self.pipeline = TaskPipeline(settings, queue, execution, lifecycle, frozenset(outputs), self.sinks,
                                     self.name, self.stopping)
        self.stats = self.pipeline.stats
        self.faults = self.pipeline.faults
        self._lock = threading.Lock()
        self._in_flight: dict[int, Delivery] = {}
        self._lag_partitions: set[str] = set()
        """Partitions whose checkpoint lag this process exported last time."""
        self._consumer_lag_partitions: set[str] = set()
        """Kafka partitions whose consumer lag this process exported last time."""

    @property
    def ready(self) -> bool:
        """False while the database is failing (the /readyz answer)."""
        return self.faults.ready and not self.stopping.is_set()

    def handle(self, delivery: Delivery) -> Outcome:
        """Run one delivery to its end (see TaskPipeline.handle)."""
        return self.pipeline.handle(delivery)

    def _release_on_shutdown(self, delivery: Delivery) -> None:
        self.pipeline.release_on_shutdown(delivery)

    # ------------------------------------------------------------------ the pool
    def run(self, exit_when_idle: float | None = None, on_tick: Callable[[], None] | None = None) -> ExecutorStats:
        """Work until `stopping` is set (SIGTERM) or, with `exit_when_idle`, until nothing arrived and
        nothing ran for that many seconds. In-flight tasks get `shutdown_timeout` to finish; the rest
        are released back to the queue."""
        workers = [threading.Thread(target=self._worker, name=f"latigo-worker-{i}", daemon=True)
                   for i in range(self.settings.workers)]
        renewer = threading.Thread(target=self._renew_loop, name="latigo-lease-renewer", daemon=True)
        for thread in (*workers, renewer):
            thread.start()
        log.info("executor %s running %d workers, %d model calls at once", self.name, len(workers),
                 self.settings.concurrency)
        while not self.stopping.wait(0.2):
            if on_tick and all(thread.is_alive() for thread in workers):
                on_tick()  # the heartbeat: stops when a worker thread has died
            if exit_when_idle is not None and self._idle_for() >= exit_when_idle:
                log.info("idle for %.0fs: stopping", exit_when_idle)
                self.stopping.set()
        deadline = time.monotonic() + self.settings.shutdown_timeout.total_seconds()
        for thread in workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._release_stragglers()
        self.pipeline.flush_unreleased()
        self.queue.close()
        self.sinks.close()
        return self.stats

    def stop(self) -> None:
        self.stopping.set()

    def _worker(self) -> None:
        poll = self.settings.poll_timeout.total_seconds()
        while not self.stopping.is_set():
            if self.pipeline.has_unreleased and not self.pipeline.flush_unreleased():
                self.stopping.wait(poll)
                continue
            try:
                delivery = self.queue.get(timeout=poll)
            except Exception as exc:
                if is_infrastructure_fault(exc):
                    self.stopping.wait(self.faults.fault(exc, "taking a task"))
                else:
                    log.exception("taking a task from the queue failed; retrying")
                    self.stopping.wait(poll)
                continue
            if delivery is None:
                continue
            self.faults.ok()
            if self.stopping.is_set():
                self._release_on_shutdown(delivery)
                break
            self._work_on(delivery)

    def _work_on(self, delivery: Delivery) -> None:
        key = id(delivery)
        with self._lock:
            self._in_flight[key] = delivery
        self.pipeline.last_activity = time.monotonic()
        try:
            self.handle(delivery)
        except TaskReleased as fault:
            self.stopping.wait(fault.delay)
        except Exception:
            # A bug in latigo while settling: leave it leased; it comes back and the ledger says where it was.
            log.exception("could not settle the task; it will be redelivered")
        finally:
            with self._lock:
                self._in_flight.pop(key, None)
            self.pipeline.last_activity = time.monotonic()

    def _renew_loop(self) -> None:
        while not self.stopping.wait(5.0):
            self._report_backlog()
            with self._lock:
                deliveries = list(self._in_flight.values())
            for delivery in deliveries:
                try:
                    delivery.renew()
                except Exception as exc:
                    log.warning("lease renewal failed: %s", type(exc).__name__)

    def _report_backlog(self) -> None:
        try:
            gauges = self.queue.gauges()
        except Exception as exc:
            log.warning("could not read the queue backlog: %s", type(exc).__name__)
            return
        if gauges.waiting is not None:
            QUEUE_BACKLOG.set(gauges.waiting)
        if gauges.oldest_age_seconds is not None:
            QUEUE_OLDEST_AGE.set(gauges.oldest_age_seconds)
        self._lag_partitions = _export_by_partition(CHECKPOINT_LAG, gauges.lag_by_partition, self._lag_partitions)
        self._consumer_lag_partitions = _export_by_partition(QUEUE_LAG, gauges.consumer_lag_by_partition,
                                                             self._consumer_lag_partitions)

    def _idle_for(self) -> float:
        with self._lock:
            if self._in_flight:
                return 0.0
        # A task handed back while a peer is down comes back later: until then the executor is not idle.
        return time.monotonic() - max(self.pipeline.last_activity, self.pipeline.waiting_until)

    def _release_stragglers(self) -> None:
        with self._lock:
            stragglers = list(self._in_flight.values())
        for delivery in stragglers:
            log.warning("shutdown timeout: releasing task %s unfinished", delivery.task and delivery.task.task_id)
            self.pipeline.hand_back(delivery)


def _export_by_partition(gauge: Any, values: Mapping[str, int], exported: set[str]) -> set[str]:
    """Set a per-partition gauge; a partition this executor no longer owns is not its lag: its series goes."""
    for partition, value in values.items():
        gauge.labels(partition=partition).set(value)
    for partition in exported - set(values):
        gauge.remove(partition)
    return set(values)
