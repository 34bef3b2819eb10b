"""The executor: N worker threads taking tasks from the queue and storing their predictions.

Per task: dedupe by ledger → execute the model (the provider fetches its sensor
data) → write predictions and mark the task done in one transaction → ack.
Only after the commit is the message acknowledged, so a crash anywhere before
means redelivery, and the ledger plus the keyed upsert make redelivery harmless.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from sqlalchemy.engine import Engine

from latigo.config import ExecutorSettings
from latigo.errors import NoDataError, PermanentError, TransientError, UnknownModelError
from latigo.interfaces import Delivery, ModelExecutionProvider, PredictionSink, TaskQueue
from latigo.logs import task_context
from latigo.observability import (
    CHECKPOINT_LAG,
    PREDICTION_ROWS,
    PROVIDER_LATENCY,
    QUEUE_BACKLOG,
    TASK_DURATION,
    TASKS_DONE,
    TASKS_FAILED,
)
from latigo.storage.db import write_transaction
from latigo.storage.ledger import DONE, Ledger, one_line
from latigo.storage.predictions import write_predictions
from latigo.types import PredictionFrame, Task

log = logging.getLogger(__name__)


class Outcome(Enum):
    DONE = "done"
    SKIPPED = "skipped"  # already done: a redelivery
    FAILED = "failed"
    DEAD_LETTER = "dead_letter"
    RELEASED = "released"  # handed back unfinished on shutdown


@dataclass
class ExecutorStats:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    dead_letter: int = 0
    released: int = 0
    rows: int = 0


def failure_reason(exc: BaseException) -> str:
    """A short class for metrics and the `failed` reason prefix."""
    if isinstance(exc, UnknownModelError):
        return "unknown_model"
    if isinstance(exc, NoDataError):
        return "no_data"
    if isinstance(exc, TransientError):
        return "transient"
    if isinstance(exc, PermanentError):
        return "permanent"
    return "internal"


class Executor:
    def __init__(
        self,
        settings: ExecutorSettings,
        queue: TaskQueue,
        execution: ModelExecutionProvider,
        engine: Engine,
        outputs: Sequence[str],
        sinks: Sequence[PredictionSink] = (),
        name: str | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.settings, self.queue, self.execution, self.engine = settings, queue, execution, engine
        self.outputs = frozenset(outputs)
        self.sinks = list(sinks)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.ledger = Ledger(engine)
        self.stats = ExecutorStats()
        self.stopping = threading.Event()
        self._sleep = sleep or self.stopping.wait
        self._lock = threading.Lock()
        self._in_flight: dict[int, Delivery] = {}
        self._last_activity = time.monotonic()

    # ------------------------------------------------------------------ one task
    def handle(self, delivery: Delivery) -> Outcome:
        """Run one delivery to its end: acked (done, skipped, failed, dead-lettered) or released."""
        if delivery.task is None:
            self.ledger.dead_letter(type(self.queue).__name__, getattr(delivery, "task_id", None), delivery.body,
                                    delivery.error or "undecodable message")
            log.error("undecodable message dead-lettered: %s", delivery.error)
            delivery.ack()
            TASKS_FAILED.labels(reason="dead_letter").inc()
            return self._count(Outcome.DEAD_LETTER)
        task = delivery.task
        with task_context(task_id=task.task_id, model=task.model, window=str(task.window)):
            return self._count(self._handle_task(task, delivery))

    def _handle_task(self, task: Task, delivery: Delivery) -> Outcome:
        known = self.ledger.state_of(task.task_id)
        if known and known[0] == DONE:
            log.info("already done; acknowledging the redelivery")
            delivery.ack()
            return Outcome.SKIPPED
        if known and known[1] >= self.settings.max_attempts:
            # Earlier attempts died with their executor (lease expiry redelivered it): stop the loop here.
            return self._fail(task, delivery, "abandoned", f"gave up after {known[1]} attempts that never finished",
                              None)
        started = time.monotonic()
        while True:
            attempt = self.ledger.mark_running(task, self.name)
            try:
                frame = self._execute(task)
                rows = self._store(task, frame, started)
                delivery.ack()
                log.info("done: %d prediction rows in %.0f ms (attempt %d)", rows, _ms_since(started), attempt)
                TASKS_DONE.inc()
                PREDICTION_ROWS.inc(rows)
                TASK_DURATION.observe(_ms_since(started) / 1000)
                return Outcome.DONE
            except TransientError as exc:
                if attempt >= self.settings.max_attempts:
                    return self._fail(task, delivery, "transient", f"transient: {exc} (after {attempt} attempts)",
                                      started)
                delay = self._backoff(attempt)
                log.warning("attempt %d failed (%s); retrying in %.1fs", attempt, exc, delay)
                if not self._wait_renewing(delivery, delay):
                    return self._release(task, delivery)
            except PermanentError as exc:
                return self._fail(task, delivery, failure_reason(exc), f"{failure_reason(exc)}: {exc}", started)
            except Exception as exc:  # a bug in a provider must not kill the worker or loop the task
                log.exception("unexpected error")
                return self._fail(task, delivery, "internal", f"internal: {type(exc).__name__}: {exc}", started)

    def _execute(self, task: Task) -> PredictionFrame:
        began = time.monotonic()
        try:
            return self.execution.execute_model(task.model, task.window.start, task.window.end)
        finally:
            PROVIDER_LATENCY.labels(provider=type(self.execution).__name__, call="execute_model").observe(
                time.monotonic() - began)

    def _store(self, task: Task, frame: PredictionFrame, started: float) -> int:
        # The provider returns the buckets completing in the window (some start before it: latigo.timegrid).
        frame = frame.only_outputs(self.outputs)
        for sink in self.sinks:
            sink.write(frame)  # idempotent, so writing before the commit is safe on redelivery
        with write_transaction(self.engine) as connection:
            rows = write_predictions(connection, frame)
            self.ledger.mark_done(connection, task, rows, int(_ms_since(started)))
        with self._lock:
            self.stats.rows += rows
        return rows

    def _fail(self, task: Task, delivery: Delivery, kind: str, reason: str, started: float | None) -> Outcome:
        """Record a final failure (`kind` is the metric label: transient, permanent, no_data, ...)."""
        log.error("failed: %s", one_line(reason, 500))
        self.ledger.mark_failed(task, reason, int(_ms_since(started)) if started else None)
        delivery.ack()
        TASKS_FAILED.labels(reason=kind).inc()
        return Outcome.FAILED

    def _release(self, task: Task, delivery: Delivery) -> Outcome:
        self.ledger.mark_released(task)
        delivery.nack(0)
        log.info("released unfinished on shutdown")
        return Outcome.RELEASED

    def _backoff(self, attempt: int) -> float:
        base = self.settings.retry_base_delay.total_seconds()
        cap = self.settings.retry_max_delay.total_seconds()
        return random.uniform(base / 2, min(cap, base * 2 ** (attempt - 1)))

    def _wait_renewing(self, delivery: Delivery, delay: float) -> bool:
        """Sleep before a retry, keeping the claim alive; False when asked to stop meanwhile."""
        deadline = time.monotonic() + delay
        while (remaining := deadline - time.monotonic()) > 0:
            delivery.renew()
            self._sleep(min(remaining, 10.0))
            if self.stopping.is_set():
                return False
        return True

    def _count(self, outcome: Outcome) -> Outcome:
        with self._lock:
            setattr(self.stats, outcome.value, getattr(self.stats, outcome.value) + 1)
            self._last_activity = time.monotonic()
        return outcome

    # ------------------------------------------------------------------ the pool
    def run(self, exit_when_idle: float | None = None, on_tick: Callable[[], None] | None = None) -> ExecutorStats:
        """Work until `stopping` is set (SIGTERM) or, with `exit_when_idle`, until nothing arrived and
        nothing ran for that many seconds. In-flight tasks get `shutdown_timeout` to finish; the rest
        are released back to the queue."""
        workers = [threading.Thread(target=self._worker, name=f"latigo-worker-{i}", daemon=True)
                   for i in range(self.settings.concurrency)]
        renewer = threading.Thread(target=self._renew_loop, name="latigo-lease-renewer", daemon=True)
        for thread in (*workers, renewer):
            thread.start()
        log.info("executor %s running %d workers", self.name, len(workers))
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
        self.queue.close()
        return self.stats

    def stop(self) -> None:
        self.stopping.set()

    def _worker(self) -> None:
        poll = self.settings.poll_timeout.total_seconds()
        while not self.stopping.is_set():
            try:
                delivery = self.queue.get(timeout=poll)
            except Exception:
                log.exception("taking a task from the queue failed; retrying")
                self.stopping.wait(poll)
                continue
            if delivery is None:
                continue
            if self.stopping.is_set():
                delivery.nack(0)
                break
            key = id(delivery)
            with self._lock:
                self._in_flight[key] = delivery
                self._last_activity = time.monotonic()
            try:
                self.handle(delivery)
            except Exception:
                # The database itself failed while settling the task: leave it leased; it comes back.
                log.exception("could not settle the task; it will be redelivered")
            finally:
                with self._lock:
                    self._in_flight.pop(key, None)
                    self._last_activity = time.monotonic()

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
            backlog = self.queue.backlog()
        except Exception as exc:
            log.warning("could not read the queue backlog: %s", type(exc).__name__)
            return
        if backlog is not None:
            QUEUE_BACKLOG.set(backlog)
        lag = getattr(self.queue, "checkpoint_lag", None)
        if lag is not None:
            for partition, events in lag().items():
                CHECKPOINT_LAG.labels(partition=partition).set(events)

    def _idle_for(self) -> float:
        with self._lock:
            return 0.0 if self._in_flight else time.monotonic() - self._last_activity

    def _release_stragglers(self) -> None:
        with self._lock:
            stragglers = list(self._in_flight.values())
        for delivery in stragglers:
            log.warning("shutdown timeout: releasing task %s unfinished", delivery.task and delivery.task.task_id)
            try:
                if delivery.task is not None:
                    self.ledger.mark_released(delivery.task)
                delivery.nack(0)
            except Exception:
                log.exception("could not release a task; its lease will expire instead")


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000
