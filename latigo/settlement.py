"""Settling a task: the one place where an outcome is carried out.

The task pipeline (latigo.task_pipeline) decides what became of a delivery, a `Verdict`, and hands it
to `Settler.carry_out` once. The settler carries it out: the ledger's change (latigo.lifecycle) and the
delivery's settlement in one unit of work, so on the database queue the queue's part commits with the
ledger and on a broker the ack or nack runs only after the commit; then it counts the outcome. A fault
of the database itself is never the task's outcome: the task is released for redelivery instead and
TaskReleased tells the worker to back off; a release the database cannot take either is kept and done
as soon as it answers again.

One door per outcome: dead letter, skipped (a redelivery of a finished task), failed, retrying (or
failed at the attempts' cap), waiting (handed back unrun while a peer is down: no attempt spent), done
(the frame shaped for storage, the required sinks, then predictions + done + ack; the other sinks after
the commit) and released (a database fault, shutdown).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum

from latigo.errors import TransientError, describe_exception, one_line
from latigo.interfaces import ACK, Delivery, Settlement, UnitOfWork
from latigo.lifecycle import TaskLifecycle
from latigo.observability import PREDICTION_ROWS, TASK_DURATION, TASKS_DONE, TASKS_FAILED, TASKS_RETRIED
from latigo.peers import PeerDown
from latigo.settings import ExecutorSettings
from latigo.sinks import SinkSet
from latigo.storage.faults import DatabaseFaults, is_infrastructure_fault, is_unrecordable
from latigo.types import PredictionFrame, Task

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


@dataclass(frozen=True)
class Verdict:
    """What became of a delivery, as the pipeline decided it, for `Settler.carry_out`."""

    outcome: Outcome
    reason: str = ""
    """Failed, dead letter: the reason recorded; skipped: the state the task was found in; released: what
    was being done ("shutdown" when the executor stops)."""
    kind: str = ""
    """Failed: the metric label (transient, permanent, no_data, abandoned, internal, ...)."""
    began: float | None = None
    """When the model call began (monotonic): the task's duration runs from here."""
    frame: PredictionFrame | None = None
    """Done: what the model returned."""
    error: BaseException | None = None
    """Retrying: the transient error; waiting: the PeerDown; released after a fault: the fault."""
    recorded: bool = True
    """Dead letter: whether the task can be recorded in the ledger (its failure with it); released after a
    fault: whether the ledger knows it as started (else only its message is released)."""


class TaskReleased(Exception):
    """A database fault inside a task: the task was released; the worker backs off."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.delay = delay


class Settler:
    """Carries out each outcome of a task (see the module docstring). Thread-safe."""

    def __init__(self, settings: ExecutorSettings, lifecycle: TaskLifecycle, source: str,
                 outputs: frozenset[str], sinks: SinkSet) -> None:
        self.settings, self.lifecycle, self.source = settings, lifecycle, source
        self.outputs, self.sinks = outputs, sinks
        self.stats = ExecutorStats()
        self.faults = DatabaseFaults()
        self.waiting_until = 0.0
        """When the last task handed back for a peer that is down comes back (monotonic)."""
        self._lock = threading.Lock()
        self._unreleased: list[tuple[Task | None, Delivery]] = []
        """Tasks a database fault left unreleased (the database could not take the release either)."""
        self._handed_back: set[int] = set()
        """Deliveries released at shutdown while their worker still runs: their results are not stored."""

    def carry_out(self, delivery: Delivery, verdict: Verdict) -> Outcome:
        """The verdict carried out and counted; raises TaskReleased (counted as released) after a fault."""
        try:
            outcome = self._through_its_door(delivery, verdict)
        except TaskReleased:
            self._count(Outcome.RELEASED)
            raise
        return self._count(outcome)

    def _through_its_door(self, delivery: Delivery, verdict: Verdict) -> Outcome:
        task = delivery.task
        if task is None or verdict.outcome is Outcome.DEAD_LETTER:
            return self._dead_letter(delivery, task if verdict.recorded else None, verdict.reason)
        match verdict.outcome:
            case Outcome.SKIPPED:
                return self._skip(delivery, verdict.reason)
            case Outcome.FAILED:
                return self._fail(task, delivery, verdict.kind, verdict.reason, verdict.began)
            case Outcome.RETRYING:
                return self._retry_later(task, delivery, verdict)
            case Outcome.WAITING:
                return self._wait_for_peer(task, delivery, verdict)
            case Outcome.DONE:
                return self._done(task, delivery, verdict)
        return self._release(task, delivery, verdict)

    def _count(self, outcome: Outcome) -> Outcome:
        with self._lock:
            setattr(self.stats, outcome.value, getattr(self.stats, outcome.value) + 1)
        return outcome

    # ------------------------------------------------------------------ the doors

    def _skip(self, delivery: Delivery, state: str) -> Outcome:
        log.info("already %s; acknowledging the redelivery", state)
        self._transaction(lambda unit: delivery.settle(ACK, unit), None, delivery, "acknowledging a finished task")
        return Outcome.SKIPPED

    def _done(self, task: Task, delivery: Delivery, verdict: Verdict) -> Outcome:
        """The frame shaped for storage, the required sinks, then stored."""
        assert verdict.frame is not None and verdict.began is not None
        began = verdict.began
        # The provider returns the buckets that complete in the window (latigo.timegrid); none lies after it.
        # The task names the model: the frame is stored under its (project, name), whatever the provider said.
        frame = replace(verdict.frame.only_outputs(self.outputs), project=task.project, model=task.model)
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
            return self._wait_for_peer(task, delivery, Verdict(Outcome.WAITING, error=exc))
        except TransientError as exc:
            return self._retry_later(task, delivery, Verdict(Outcome.RETRYING, error=exc, began=began))
        return self._store(task, delivery, frame, began)

    def _store(self, task: Task, delivery: Delivery, frame: PredictionFrame, began: float) -> Outcome:
        """Predictions + done + ack in one transaction; the other sinks after the commit."""
        try:
            self.lifecycle.predictions.ready_for(frame)
            with self.lifecycle.unit_of_work() as unit:
                rows = self.lifecycle.finish(unit.connection, task, frame, int(_ms_since(began)))
                delivery.settle(ACK, unit)
        except Exception as exc:
            if is_infrastructure_fault(exc):
                raise self.released(task, delivery, exc, "storing the predictions") from None
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

    def _retry_later(self, task: Task, delivery: Delivery, verdict: Verdict) -> Outcome:
        """Back on the queue with a delay (the worker does not sleep on it), or failed at the cap."""
        error, began = verdict.error, verdict.began
        decided: dict[str, float | int] = {}

        def change(unit: UnitOfWork) -> None:
            attempts = self.lifecycle.retry_later(unit.connection, task, f"transient: {error}")
            decided.update(attempts=attempts, delay=self._backoff(attempts))
            if attempts >= self.settings.max_attempts:
                self.lifecycle.fail(unit.connection, task, f"transient: {error} (after {attempts} attempts)",
                                    int(_ms_since(began)) if began else None)
                decided["delay"] = -1
            delivery.settle(ACK if decided["delay"] < 0 else Settlement("nack", decided["delay"]), unit)

        self._transaction(change, task, delivery, "recording the retry")
        attempts = int(decided["attempts"])
        if decided["delay"] < 0:
            log.error("failed after %d attempts: %s", attempts, one_line(str(error), 500))
            TASKS_FAILED.labels(reason="transient").inc()
            return Outcome.FAILED
        log.warning("attempt %d failed (%s); redelivering in %.1fs", attempts, error, decided["delay"])
        TASKS_RETRIED.inc()
        return Outcome.RETRYING

    def _wait_for_peer(self, task: Task, delivery: Delivery, verdict: Verdict) -> Outcome:
        """Hand the task back unrun until the peer's next probe: an outage is not the task's failure, so no
        attempt is spent and no delivery counted. The delays spread between one and two probe intervals,
        so a backlog does not come back all at once."""
        down = verdict.error
        assert isinstance(down, PeerDown)
        delay = down.retry_in * random.uniform(1.0, 2.0) + random.uniform(0.0, 1.0)

        def change(unit: UnitOfWork) -> None:
            self.lifecycle.release(unit.connection, task, f"waiting: {down}")
            delivery.settle(Settlement("release", delay), unit)

        self._transaction(change, task, delivery, "handing the task back while a peer is down")
        log.debug("waiting %.1fs: %s", delay, down)
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

        def change(unit: UnitOfWork) -> None:
            kept = self.lifecycle.dead_letter(unit.connection, self.source, delivery.message_id, delivery.body,
                                              error, task)
            if task is not None:
                self.lifecycle.fail(unit.connection, task, f"dead_letter: {error}")
            if kept:
                log.error("message dead-lettered: %s", one_line(error, 500))
            delivery.settle(ACK, unit)

        self._transaction(change, task, delivery, "dead-lettering")
        TASKS_FAILED.labels(reason="dead_letter").inc()
        return Outcome.DEAD_LETTER

    # ------------------------------------------------------------------ releases

    def _release(self, task: Task, delivery: Delivery, verdict: Verdict) -> Outcome:
        """Handed back unfinished: at shutdown (before its model ran), or after a database fault (raises
        TaskReleased)."""
        if verdict.error is None:
            log.info("stopping before its model ran: handing it back")
            self.release_on_shutdown(delivery)
            return Outcome.RELEASED
        raise self.released(task if verdict.recorded else None, delivery, verdict.error, verdict.reason)

    def hand_back(self, delivery: Delivery) -> None:
        """Release a delivery whose worker is still running it (shutdown): it will not be stored."""
        with self._lock:
            self._handed_back.add(id(delivery))
        self.release_on_shutdown(delivery)
        self._count(Outcome.RELEASED)

    def released(self, task: Task | None, delivery: Delivery, exc: BaseException, doing: str) -> TaskReleased:
        """A database fault: release the task and tell the worker to back off. When the database cannot take
        the release either, it is kept and done as soon as the database answers again (before this executor
        takes other work), so an outage is not mistaken for a dead executor (a lost run) by whoever starts
        the task next; only if this process dies first does the lease expire instead."""
        delay = self.faults.fault(exc, doing)
        if not self._release_now(task, delivery):
            with self._lock:
                self._unreleased.append((task, delivery))
            log.info("could not release it yet: it is released as soon as the database answers")
        return TaskReleased(delay)

    @property
    def has_unreleased(self) -> bool:
        return bool(self._unreleased)

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

    def _hand_back(self, task: Task | None, delivery: Delivery) -> None:
        """The task queued again in the ledger and its message released, unrun: nothing counted."""
        with self.lifecycle.unit_of_work() as unit:
            if task is not None:
                self.lifecycle.release(unit.connection, task)
            delivery.settle(Settlement("release"), unit)

    # ------------------------------------------------------------------ internals

    def _transaction(self, change: Callable[[UnitOfWork], None], task: Task | None, delivery: Delivery,
                     doing: str) -> None:
        """Run a lifecycle change and the delivery's settlement as one unit of work; a database fault
        releases the task instead."""
        try:
            with self.lifecycle.unit_of_work() as unit:
                change(unit)
        except Exception as exc:
            if is_infrastructure_fault(exc):
                raise self.released(task, delivery, exc, doing) from None
            raise
        self.faults.ok()

    def _backoff(self, attempt: int) -> float:
        base = self.settings.retry_base_delay.total_seconds()
        cap = self.settings.retry_max_delay.total_seconds()
        return random.uniform(base / 2, min(cap, base * 2 ** (attempt - 1)))


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000
