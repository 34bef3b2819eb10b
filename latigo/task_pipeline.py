"""One task, from delivery to settlement: the executor's per-task pipeline (the pool of workers around it
is latigo.executor). The pipeline decides what became of the task; latigo.settlement carries each
outcome out, the ledger's change and the delivery's settlement as one unit of work.

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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from latigo.errors import NoDataError, PermanentError, TransientError, UnknownModelError, describe_exception
from latigo.interfaces import Delivery, ModelExecutionProvider, TaskQueue
from latigo.lifecycle import MAX_NAME_LENGTH, TaskLifecycle
from latigo.logs import task_context
from latigo.model_slots import ModelSlots
from latigo.observability import PROVIDER_LATENCY
from latigo.peers import PeerDown
from latigo.settings import ExecutorSettings
from latigo.settlement import Outcome, Settler, Verdict
from latigo.sinks import SinkSet
from latigo.storage.faults import is_infrastructure_fault, is_unrecordable
from latigo.types import PredictionFrame, Started, Task

log = logging.getLogger("latigo.executor")


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


class TaskPipeline:
    """Runs deliveries to their end. Thread-safe: every worker of an executor shares one."""

    def __init__(self, settings: ExecutorSettings, queue: TaskQueue, execution: ModelExecutionProvider,
                 lifecycle: TaskLifecycle, outputs: frozenset[str], sinks: SinkSet, name: str,
                 stopping: threading.Event | None = None) -> None:
        self.settings, self.queue, self.execution, self.lifecycle = settings, queue, execution, lifecycle
        self.name = name
        self.stopping = stopping or threading.Event()
        self.settler = Settler(settings, lifecycle, type(queue).__name__, outputs, sinks)
        """Where every outcome is carried out (latigo.settlement)."""
        self._model_slots = ModelSlots(settings.concurrency)
        """At most `concurrency` model calls at once, however many workers claim and store around them."""
        self.stats = self.settler.stats
        self.faults = self.settler.faults
        self.last_activity = time.monotonic()

    @property
    def waiting_until(self) -> float:
        """When the last task handed back for a peer that is down comes back (monotonic)."""
        return self.settler.waiting_until

    def hand_back(self, delivery: Delivery) -> None:
        """Release a delivery whose worker is still running it (shutdown): it will not be stored."""
        self.settler.hand_back(delivery)

    @property
    def has_unreleased(self) -> bool:
        return self.settler.has_unreleased

    def flush_unreleased(self) -> bool:
        """Release what a fault left unreleased; False while the database still fails."""
        return self.settler.flush_unreleased()

    def release_on_shutdown(self, delivery: Delivery) -> None:
        self.settler.release_on_shutdown(delivery)

    # ------------------------------------------------------------------ one task
    def handle(self, delivery: Delivery) -> Outcome:
        """Run one delivery to its end: settled (done, skipped, retrying, failed, dead-lettered) or released.
        The outcome is decided here and carried out once, by the settler. Raises TaskReleased after
        releasing the task when the database failed meanwhile."""
        task = delivery.task
        fields = {"task_id": task.task_id, "project": task.project, "model": task.model,
                  "window": str(task.window)} if task else {}
        with task_context(**fields):
            return self.settler.carry_out(delivery, self._verdict(delivery))

    def _verdict(self, delivery: Delivery) -> Verdict:
        task = delivery.task
        if task is None:
            return Verdict(Outcome.DEAD_LETTER, delivery.error or "undecodable message")
        refusal = self._refusal(task, delivery)
        if refusal:
            return Verdict(Outcome.DEAD_LETTER, refusal)
        started = delivery.started or self._start(task)
        if isinstance(started, Verdict):
            return started
        if not started.run:
            return Verdict(Outcome.SKIPPED, started.state)
        if started.lost >= self.settings.max_lost_runs:
            return Verdict(Outcome.FAILED, f"abandoned: {started.lost} runs never finished (their executor died)",
                           kind="abandoned")
        return self._run(task)

    def _run(self, task: Task) -> Verdict:
        """The model's verdict: done with its frame, or why not."""
        try:
            with self._model_slot():
                began = time.monotonic()  # the task's duration: waiting for a slot is not its cost
                frame = self._execute(task)
        except _Stopping:
            return Verdict(Outcome.RELEASED, "shutdown")
        except PeerDown as exc:
            return Verdict(Outcome.WAITING, error=exc)
        except TransientError as exc:
            return Verdict(Outcome.RETRYING, error=exc, began=began)
        except PermanentError as exc:
            return Verdict(Outcome.FAILED, f"{failure_reason(exc)}: {exc}", kind=failure_reason(exc), began=began)
        except Exception as exc:
            if is_infrastructure_fault(exc):
                return Verdict(Outcome.RELEASED, "running the model", error=exc)
            log.exception("unexpected error")  # a provider bug must not kill the worker or loop the task
            return Verdict(Outcome.FAILED, f"internal: {describe_exception(exc, 500)}", kind="internal", began=began)
        return Verdict(Outcome.DONE, frame=frame, began=began)

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

    def _start(self, task: Task) -> Started | Verdict:
        """The task started in the ledger, or the verdict when the ledger cannot take it."""
        try:
            with self.lifecycle.transaction() as connection:
                return self.lifecycle.start(connection, task, self.name)
        except Exception as exc:
            if is_infrastructure_fault(exc):
                return Verdict(Outcome.RELEASED, "starting the task", error=exc, recorded=False)
            if is_unrecordable(exc):
                return Verdict(Outcome.DEAD_LETTER, f"the ledger cannot record it: {describe_exception(exc)}",
                               recorded=False)
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
