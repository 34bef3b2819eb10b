"""Consecutive windows of one model in one request, when an executor holds several of them at once.

A Gordo request costs its server about as much for 3 rows as for 30: most of it is the model's own
`anomaly()` call and the request's decoding and encoding (benchmarks/gordo.py). When a backlog drains (a
backfill, the catch-up after a Gordo or sensor outage) an executor's workers hold several windows of one
model at the same time; here they go to the server as one request:

- at most one request per model is in flight from one executor: a window that arrives meanwhile waits,
  and the windows that waited go together when it returns. In steady state (one window per model per
  cycle) nothing waits and nothing changes;
- only consecutive windows are joined (each starts where the one before it ends), at most `limit`;
- the joined answer is shared out by the buckets that complete in each window, which is what each window
  alone gets (latigo.model_input: a bucket's value is the same in any longer range that holds it);
- joining never changes an outcome: a window whose share is empty, and every window of a joined request
  that failed for its data or its model (a PermanentError), is run again alone; a fault of the peer or
  any other transient failure is every joined window's, as it would have been for each of them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from latigo.errors import PermanentError
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
    done: bool = False

    def settle(self, result: PredictionFrame | None = None, error: BaseException | None = None) -> None:
        self.result, self.error, self.done = result, error, True


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
        if batch is not None:
            try:
                self._serve(key, batch)
            finally:
                with self._changed:
                    self._busy.discard(key)
                    self._changed.notify_all()
        if mine.error is not None:
            raise mine.error
        assert mine.result is not None
        return mine.result

    def _wait_or_lead(self, key: K, mine: _Waiting) -> list[_Waiting] | None:
        """None once another thread has served `mine`; else every window waiting for `key` (mine among
        them), which this thread now serves."""
        with self._changed:
            self._waiting.setdefault(key, []).append(mine)
            while not mine.done and key in self._busy:
                self._changed.wait()
            if mine.done:
                return None
            self._busy.add(key)
            return self._waiting.pop(key)

    def _serve(self, key: K, batch: list[_Waiting]) -> None:
        try:
            for run in consecutive_runs(sorted(batch, key=lambda w: w.window.start), self.limit):
                self._serve_run(key, run)
        except BaseException as exc:  # interrupted: no waiting window is left without an answer
            for waiting in batch:
                if not waiting.done:
                    waiting.settle(error=exc)
            raise

    def _serve_run(self, key: K, run: Sequence[_Waiting]) -> None:
        if len(run) == 1:
            self._alone(key, run[0])
            return
        try:
            frame = self._run(key, TimeRange(run[0].window.start, run[-1].window.end))
        except PermanentError:  # the data or the model: each window's own outcome decides
            for waiting in run:
                self._alone(key, waiting)
            return
        except Exception as exc:
            for waiting in run:
                waiting.settle(error=exc)
            return
        for waiting in run:
            share = self._share(key, frame, waiting.window)
            if share.rows:
                waiting.settle(share)
            else:
                self._alone(key, waiting)

    def _alone(self, key: K, waiting: _Waiting) -> None:
        try:
            waiting.settle(self._run(key, waiting.window))
        except Exception as exc:
            waiting.settle(error=exc)


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
