"""Consecutive windows of one model in one request, when an executor holds several of them at once.

A Gordo request costs its server about as much for 3 rows as for 30: most of it is the model's own
`anomaly()` call and the request's decoding and encoding (benchmarks/gordo.py). When a backlog drains (a
backfill, the catch-up after a Gordo or sensor outage) an executor's workers hold several windows of one
model at the same time; here they go to the server as one request:

- a window that arrives while a request for its model is in flight from this executor waits, and the
  windows that waited go together when it returns. While it waits it holds no model slot
  (latigo.model_slots): the executor's other workers run meanwhile. In steady state (one window per
  model per cycle) nothing waits and nothing changes;
- only consecutive windows are joined (each starts where the one before it ends), at most `limit`;
- the joined answer is shared out by the buckets that complete in each window, which is what each window
  alone gets (latigo.model_input: a bucket's value is the same in any longer range that holds it);
- joining never changes an outcome: when a joined request fails, each of its windows runs alone in its
  own thread, as it would have without joining (its own error, its own attempt, its own report to the
  peer's breaker), and so does a window whose share is empty; only a PeerDown (the peer's breaker is
  open: nothing was sent) is every joined window's answer at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from latigo.model_slots import give_back_slot, take_slot_again
from latigo.peers import PeerDown
from latigo.types import PredictionFrame, TimeRange

K = TypeVar("K", bound=Hashable)
Run = Callable[[K, TimeRange], PredictionFrame]
"""Executes the model `K` over one range: one window, or several consecutive ones."""
Share = Callable[[K, PredictionFrame, TimeRange], PredictionFrame]
"""The rows of a joined answer that belong to one of its windows."""


@dataclass(eq=False)
class _Waiting:
    window: TimeRange
    result: PredictionFrame | None = None
    error: BaseException | None = None
    alone: bool = False
    """Answered with "run it yourself": its thread executes the window alone."""
    done: bool = False


class WindowJoiner(Generic[K]):
    """`execute(key, window)` for many threads; see the module docstring."""

    def __init__(self, run: Run[K], share: Share[K], limit: int) -> None:
        self._run, self._share, self.limit = run, share, limit
        self._waiting: dict[K, list[_Waiting]] = {}
        self._busy: set[K] = set()
        self._changed = threading.Condition()

    def execute(self, key: K, window: TimeRange) -> PredictionFrame:
        if self.limit <= 1:
            return self._run(key, window)
        mine = _Waiting(window)
        batch = self._wait_or_lead(key, mine)
        if batch is not None or mine.alone:
            take_slot_again()  # to make a request of its own (a no-op when it never waited)
        if batch is not None:
            try:
                self._serve(key, batch, mine)
            finally:
                with self._changed:
                    self._busy.discard(key)
                    self._changed.notify_all()
        if mine.alone:
            return self._run(key, window)
        if mine.error is not None:
            raise mine.error
        assert mine.result is not None
        return mine.result

    def _wait_or_lead(self, key: K, mine: _Waiting) -> list[_Waiting] | None:
        """None once another thread has answered `mine`; else every window waiting for `key` (mine among
        them), which this thread now serves."""
        with self._changed:
            self._waiting.setdefault(key, []).append(mine)
            if key in self._busy:
                give_back_slot()
            while not mine.done and key in self._busy:
                self._changed.wait()
            if mine.done:
                return None
            self._busy.add(key)
            return self._waiting.pop(key)

    def _answer(self, waiting: _Waiting, result: PredictionFrame | None = None, error: BaseException | None = None,
                alone: bool = False) -> None:
        with self._changed:
            waiting.result, waiting.error, waiting.alone, waiting.done = result, error, alone, True
            self._changed.notify_all()

    def _serve(self, key: K, batch: list[_Waiting], mine: _Waiting) -> None:
        """Joined requests for the consecutive runs; the leader's own lone window runs here while the key is
        busy (so that the next windows pile up behind it); every other lone window runs in its own thread."""
        try:
            for run in consecutive_runs(sorted(batch, key=lambda w: w.window.start), self.limit):
                if len(run) > 1:
                    self._serve_joined(key, run)
                elif run[0] is not mine:
                    self._answer(run[0], alone=True)
            if not mine.done:
                self._answer(mine, *self._outcome(key, mine.window))
        except BaseException:  # interrupted: no waiting window is left without an answer
            for waiting in batch:
                if not waiting.done:
                    self._answer(waiting, alone=True)
            raise

    def _serve_joined(self, key: K, run: Sequence[_Waiting]) -> None:
        try:
            frame = self._run(key, TimeRange(run[0].window.start, run[-1].window.end))
        except PeerDown as exc:  # nothing was sent: every window would hear the same alone
            for waiting in run:
                self._answer(waiting, error=exc)
            return
        except Exception:  # each window's own call decides its outcome, as without joining
            for waiting in run:
                self._answer(waiting, alone=True)
            return
        for waiting in run:
            share = self._share(key, frame, waiting.window)
            if share.rows:
                self._answer(waiting, share)
            else:
                self._answer(waiting, alone=True)

    def _outcome(self, key: K, window: TimeRange) -> tuple[PredictionFrame | None, BaseException | None]:
        try:
            return self._run(key, window), None
        except Exception as exc:
            return None, exc


def consecutive_runs(ordered: Sequence[_Waiting], limit: int) -> Iterator[list[_Waiting]]:
    """Runs of windows that follow each other without a gap, at most `limit` long, in order."""
    run: list[_Waiting] = []
    for waiting in ordered:
        if run and (waiting.window.start != run[-1].window.end or len(run) >= limit):
            yield run
            run = []
        run.append(waiting)
    if run:
        yield run
