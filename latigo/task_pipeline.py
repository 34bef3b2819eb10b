"""One task, from delivery to settlement: the executor's per-task pipeline (the pool of workers around it
is latigo.executor).

1. start (the database queue does it in the claim's transaction; a finished task is acked and skipped);
2. execute the model (the provider fetches its sensor data) in one of `concurrency` model slots; the
   executor runs a few more workers than slots, so while the models run, the spare workers claim the
   next tasks and store the finished ones, and a slot never waits on the database;
3. finish: predictions + `done` (+ the queue row's removal) in one transaction, then ack;
4. optional sinks, best-effort, after the commit.

Outcomes: a TransientError is retried by redelivery with a delay (nack), up to `max_attempts` runs
that failed; a PermanentError fails the task at once. A fault of the database itself (connection
lost, lock timeout, server restarting) is never the task's outcome: the task is released for
redelivery and TaskReleased tells the worker to back off.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import Enum

from latigo.errors import NoDataError, PermanentError, TransientError, UnknownModelError, describe_exception, one_line
from latigo.interfaces import ACK, Delivery, ModelExecutionProvider, Settlement, TaskQueue, UnitOfWork
from latigo.lifecycle import MAX_NAME_LENGTH, TaskLifecycle
from latigo.logs import task_context
from latigo.model_slots import ModelSlots
from latigo.observability import (
    PREDICTION_ROWS,
    PROVIDER_LATENCY,
    TASK_DURATION,
    TASKS_DONE,
    TASKS_FAILED,
    TASKS_RETRIED,
)
from latigo.peers import PeerDown
from latigo.settings import ExecutorSettings
from latigo.sinks import SinkSet
from latigo.storage.faults import DatabaseFaults, is_infrastructure_fault, is_unrecordable
from latigo.types import PredictionFrame, Started, Task

log = logging.getLogger("latigo.executor")


class Outcome(Enum):
    DONE = "done"
    SKIPPED = "skipped"  # already finished: a redelivery
    FAILED = "failed"
    RETRYING = "retrying"  # handed back with a delay after a transient failure
    DEAD_LETTER = "dead_letter"
    RELEASED = "released"  # handed back unfinished: shutdown or an infrastructure fault
    WAITING = "waiting"  # handed back unrun, for later: a peer it needs is down (no attempt spent)


@dataclass
class ExecutorStats:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    retrying: int = 0
    dead_letter: int = 0
    released: int = 0
    waiting: int = 0
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


class _Stopping(Exception):
    """The executor began stopping while the task waited for a model slot: it is handed back unrun."""


class TaskReleased(Exception):
    """A database fault inside a task: the task was released; the worker backs off."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.delay = delay


class TaskPipeline:
    """Runs deliveries to their end. Thread-safe: every worker of an executor shares one."""

    def __init__(self, settings: ExecutorSettings, queue: TaskQueue, execution: ModelExecutionProvider,
                 lifecycle: TaskLifecycle, outputs: frozenset[str], sinks: SinkSet, name: str,
                 stopping: threading.Event | None = None) -> None:
        self.settings, self.queue, self.execution, self.lifecycle = settings, queue, execution, lifecycle
        self.outputs, self.sinks, self.name = outputs, sinks, name
        self.stopping = stopping or threading.Event()
        self._model_slots = ModelSlots(settings.concurrency)
        """At most `concurrency` model calls at once, however many workers claim and store around them."""
        self.stats = ExecutorStats()
        self.faults = DatabaseFaults()
        self.last_activity = time.monotonic()
        self.waiting_until = 0.0
        """When the last task handed back for a peer that is down comes back (monotonic)."""
        self._lock = threading.Lock()
        self._handed_back: set[int] = set()
        """Deliveries released at shutdown while their worker still runs: their results are not stored."""
        self._unreleased: list[tuple[Task | None, Delivery]] = []
        """Tasks a database fault left unreleased (the database could not take the release either)."""

    def hand_back(self, delivery: Delivery) -> None:
        """Release a delivery whose worker is still running it (shutdown): it will not be stored."""
        with self._lock:
            self._handed_back.add(id(delivery))
        self.release_on_shutdown(delivery)
        self.count(Outcome.RELEASED)

    @property
    def has_unreleased(self) -> bool:
        return bool(self._unreleased)

    # ------------------------------------------------------------------ one task
    def handle(self, delivery: Delivery) -> Outcome:
        """Run one delivery to its end: settled (done, skipped, retrying, failed, dead-lettered) or released.
        Raises TaskReleased after releasing the task when the database failed meanwhile."""
        if delivery.task is None:
            return self.count(self._dead_letter(delivery, None, delivery.error or "undecodable message"))
        task = delivery.task
        with task_context(task_id=task.task_id, project=task.project, model=task.model, window=str(task.window)):
            return self.count(self._handle_task(task, delivery))

    def _handle_task(self, task: Task, delivery: Delivery) -> Outcome:
        refusal = self._refusal(task, delivery)
        if refusal:
            return self._dead_letter(delivery, task, refusal)
        started = delivery.started or self._start(task, delivery)
        if started is None:
            return Outcome.DEAD_LETTER
        if not started.run:
            log.info("already %s; acknowledging the redelivery", started.state)
            self._transaction(lambda unit: delivery.settle(ACK, unit), None, delivery,
                              "acknowledging a finished task")
            return Outcome.SKIPPED
        if started.lost >= self.settings.max_lost_runs:
            return self._fail(task, delivery, "abandoned",
                              f"abandoned: {started.lost} runs never finished (their executor died)", None)
        try:
            with self._model_slot():
                began = time.monotonic()  # the task's duration: waiting for a slot is not its cost
                frame = self._execute(task)
        except _Stopping:
            log.info("stopping before its model ran: handing it back")
            self.release_on_shutdown(delivery)
            return Outcome.RELEASED
        except PeerDown as exc:
            return self._wait_for_peer(task, delivery, exc)
        except TransientError as exc:
            return self._retry_later(task, delivery, exc, began)
        except PermanentError as exc:
            return self._fail(task, delivery, failure_reason(exc), f"{failure_reason(exc)}: {exc}", began)
        except Exception as exc:
            if is_infrastructure_fault(exc):
                raise self._released(task, delivery, exc, "running the model") from None
            log.exception("unexpected error")  # a provider bug must not kill the worker or loop the task
            return self._fail(task, delivery, "internal", f"internal: {describe_exception(exc, 500)}", began)
        return self._finish(task, delivery, frame, began)

    def _refusal(self, task: Task, delivery: Delivery) -> str:
        """Why a message is not taken at all (it can never be recorded or run), or ''."""
        if len(task.model) > MAX_NAME_LENGTH:
            return f"model name is {len(task.model)} characters; the ledger holds at most {MAX_NAME_LENGTH}"
        if len(task.project) > MAX_NAME_LENGTH:
            return f"project name is {len(task.project)} characters; the ledger holds at most {MAX_NAME_LENGTH}"
        if task.window.duration > self.settings.max_window:
            return f"window {task.window} is longer than executor.max_window ({self.settings.max_window})"
        if delivery.attempt > self.settings.max_deliveries:
            return f"delivered {delivery.attempt} times without being settled"
        return ""

    def _start(self, task: Task, delivery: Delivery) -> Started | None:
        try:
            with self.lifecycle.transaction() as connection:
                return self.lifecycle.start(connection, task, self.name)
        except Exception as exc:
            if is_infrastructure_fault(exc):
                raise self._released(None, delivery, exc, "starting the task") from None
            if is_unrecordable(exc):
                self._dead_letter(delivery, None, f"the ledger cannot record it: {describe_exception(exc)}")
                return None
            raise

    @contextmanager
    def _model_slot(self) -> Iterator[None]:
        """One of the `concurrency` model slots, waited for while all are busy; raises _Stopping when the
        executor began stopping meanwhile (the task is handed back without running)."""
        with self._model_slots.slot():
            if self.stopping.is_set():
                raise _Stopping
            yield

    def _execute(self, task: Task) -> PredictionFrame:
        began = time.monotonic()
        try:
            return self.execution.execute_model(task.ref, task.window.start, task.window.end)
        finally:
            PROVIDER_LATENCY.labels(provider=type(self.execution).__name__, call="execute_model").observe(
                time.monotonic() - began)

    def _finish(self, task: Task, delivery: Delivery, frame: PredictionFrame, began: float) -> Outcome:
        # The provider returns the buckets that complete in the window (latigo.timegrid); none lies after it.
        # The task names the model: the frame is stored under its (project, name), whatever the provider said.
        frame = replace(frame.only_outputs(self.outputs), project=task.project, model=task.model)
        late = [row for row in frame.rows if row.ts >= task.window.end]
        if late:
            return self._fail(task, delivery, "internal", f"internal: the provider returned {len(late)} rows at or "
                              f"after the window's end (e.g. {late[0].ts.isoformat()})", began)
        with self._lock:
            if id(delivery) in self._handed_back:
                log.info("finished after it was released at shutdown; its next delivery stores it")
                return Outcome.RELEASED
        try:
            self.sinks.write_required(frame)
        except PeerDown as exc:
            return self._wait_for_peer(task, delivery, exc)
        except TransientError as exc:
            return self._retry_later(task, delivery, exc, began)
        try:
            self.lifecycle.predictions.ready_for(frame)
            with self.lifecycle.unit_of_work() as unit:
                rows = self.lifecycle.finish(unit.connection, task, frame, int(_ms_since(began)))
                delivery.settle(ACK, unit)
        except Exception as exc:
            if is_infrastructure_fault(exc):
                raise self._released(task, delivery, exc, "storing the predictions") from None
            if is_unrecordable(exc):
                return self._fail(task, delivery, "permanent", "permanent: the predictions cannot be stored: "
                                  f"{describe_exception(exc, 500)}", began)
            raise
        self.faults.ok()
        log.info("done: %d prediction rows in %.0f ms%s", rows, _ms_since(began),
                 f" ({frame.note})" if frame.note else "")
        TASKS_DONE.inc()
        PREDICTION_ROWS.inc(rows)
        TASK_DURATION.observe(_ms_since(began) / 1000)
        with self._lock:
            self.stats.rows += rows
        self.sinks.write(frame)
        return Outcome.DONE

    def _retry_later(self, task: Task, delivery: Delivery, exc: TransientError, began: float) -> Outcome:
        """Back on the queue with a delay (the worker does not sleep on it), or failed at the cap."""
        decided: dict[str, float | int] = {}

        def change(unit: UnitOfWork) -> None:
            attempts = self.lifecycle.retry_later(unit.connection, task, f"transient: {exc}")
            decided.update(attempts=attempts, delay=self._backoff(attempts))
            if attempts >= self.settings.max_attempts:
                self.lifecycle.fail(unit.connection, task, f"transient: {exc} (after {attempts} attempts)",
                                    int(_ms_since(began)))
                decided["delay"] = -1
            delivery.settle(ACK if decided["delay"] < 0 else Settlement("nack", decided["delay"]), unit)

        self._transaction(change, task, delivery, "recording the retry")
        attempts = int(decided["attempts"])
        if decided["delay"] < 0:
            log.error("failed after %d attempts: %s", attempts, one_line(str(exc), 500))
            TASKS_FAILED.labels(reason="transient").inc()
            return Outcome.FAILED
        log.warning("attempt %d failed (%s); redelivering in %.1fs", attempts, exc, decided["delay"])
        TASKS_RETRIED.inc()
        return Outcome.RETRYING

    def _wait_for_peer(self, task: Task, delivery: Delivery, exc: PeerDown) -> Outcome:
        """Hand the task back unrun until the peer's next probe: an outage is not the task's failure, so no
        attempt is spent and no delivery counted. The delays spread between one and two probe intervals,
        so a backlog does not come back all at once."""
        delay = exc.retry_in * random.uniform(1.0, 2.0) + random.uniform(0.0, 1.0)

        def change(unit: UnitOfWork) -> None:
            self.lifecycle.release(unit.connection, task, f"waiting: {exc}")
            delivery.settle(Settlement("release", delay), unit)

        self._transaction(change, task, delivery, "handing the task back while a peer is down")
        log.debug("waiting %.1fs: %s", delay, exc)
        with self._lock:
            self.waiting_until = max(self.waiting_until, time.monotonic() + delay)
        return Outcome.WAITING

    def _fail(self, task: Task, delivery: Delivery, kind: str, reason: str, began: float | None) -> Outcome:
        """Record a final failure (`kind` is the metric label: transient, permanent, no_data, ...)."""
        log.error("failed: %s", one_line(reason, 500))
        duration = int(_ms_since(began)) if began else None

        def change(unit: UnitOfWork) -> None:
            self.lifecycle.fail(unit.connection, task, reason, duration)
            delivery.settle(ACK, unit)

        self._transaction(change, task, delivery, "recording the failure")
        TASKS_FAILED.labels(reason=kind).inc()
        return Outcome.FAILED

    def _dead_letter(self, delivery: Delivery, task: Task | None, error: str) -> Outcome:
        """Keep the message once in dead_letters and end it; its task (when it can be recorded) fails."""
        source = type(self.queue).__name__

        def change(unit: UnitOfWork) -> None:
            kept = self.lifecycle.dead_letter(unit.connection, source, delivery.message_id, delivery.body, error,
                                              task)
            if task is not None:
                self.lifecycle.fail(unit.connection, task, f"dead_letter: {error}")
            if kept:
                log.error("message dead-lettered: %s", one_line(error, 500))
            delivery.settle(ACK, unit)

        self._transaction(change, task, delivery, "dead-lettering")
        TASKS_FAILED.labels(reason="dead_letter").inc()
        return Outcome.DEAD_LETTER

    # ------------------------------------------------------------------ settling
    def _transaction(self, change: Callable[[UnitOfWork], None], task: Task | None, delivery: Delivery,
                     doing: str) -> None:
        """Run a lifecycle change and the delivery's settlement as one unit of work; a database fault
        releases the task instead."""
        try:
            with self.lifecycle.unit_of_work() as unit:
                change(unit)
        except Exception as exc:
            if is_infrastructure_fault(exc):
                raise self._released(task, delivery, exc, doing) from None
            raise
        self.faults.ok()

    def _released(self, task: Task | None, delivery: Delivery, exc: BaseException, doing: str) -> TaskReleased:
        """A database fault: release the task and tell the worker to back off. When the database cannot take
        the release either, it is kept and done as soon as the database answers again (before this executor
        takes other work), so an outage is not mistaken for a dead executor (a lost run) by whoever starts
        the task next; only if this process dies first does the lease expire instead."""
        delay = self.faults.fault(exc, doing)
        if not self._release_now(task, delivery):
            with self._lock:
                self._unreleased.append((task, delivery))
            log.info("could not release it yet: it is released as soon as the database answers")
        self.count(Outcome.RELEASED)
        return TaskReleased(delay)

    def _release_now(self, task: Task | None, delivery: Delivery) -> bool:
        try:
            self._hand_back(task, delivery)
            return True
        except Exception as exc:
            if not is_infrastructure_fault(exc):
                log.warning("releasing task %s failed (%s); its lease will expire instead",
                            task.task_id if task else delivery.message_id, describe_exception(exc))
                return True  # not worth keeping: it would fail the same way again
            return False

    def flush_unreleased(self) -> bool:
        """Release what a fault left unreleased; False while the database still fails."""
        with self._lock:
            pending, self._unreleased = self._unreleased, []
        left = [(task, delivery) for task, delivery in pending if not self._release_now(task, delivery)]
        if left:
            with self._lock:
                self._unreleased.extend(left)
        return not left

    def release_on_shutdown(self, delivery: Delivery) -> None:
        try:
            self._hand_back(delivery.task, delivery)
        except Exception as exc:
            log.warning("could not release task %s (%s); its lease will expire instead",
                        delivery.task and delivery.task.task_id, describe_exception(exc))

    def _hand_back(self, task: Task | None, delivery: Delivery) -> None:
        """The task queued again in the ledger and its message released, unrun: nothing counted."""
        with self.lifecycle.unit_of_work() as unit:
            if task is not None:
                self.lifecycle.release(unit.connection, task)
            delivery.settle(Settlement("release"), unit)

    def _backoff(self, attempt: int) -> float:
        base = self.settings.retry_base_delay.total_seconds()
        cap = self.settings.retry_max_delay.total_seconds()
        return random.uniform(base / 2, min(cap, base * 2 ** (attempt - 1)))

    def count(self, outcome: Outcome) -> Outcome:
        with self._lock:
            setattr(self.stats, outcome.value, getattr(self.stats, outcome.value) + 1)
            self.last_activity = time.monotonic()
        return outcome


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000
