"""WindowJoiner: windows of one model that wait at the same time go as one request, and every window
gets what it would have got alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from latigo.errors import NoDataError, TransientError
from latigo.model_slots import ModelSlots
from latigo.models.window_joining import WindowJoiner
from latigo.peers import PeerDown
from latigo.types import PredictionFrame, PredictionRow, TimeRange

T0 = datetime(2026, 3, 2, tzinfo=timezone.utc)
STEP = timedelta(minutes=10)
WINDOW = timedelta(minutes=30)


def window(index: int) -> TimeRange:
    return TimeRange(T0 + index * WINDOW, T0 + (index + 1) * WINDOW)


def rows_for(span: TimeRange) -> PredictionFrame:
    """One row per 10-minute bucket of `span`: value = minutes since T0."""
    stamps = [span.start + i * STEP for i in range((span.end - span.start) // STEP)]
    return PredictionFrame("m", [PredictionRow("total", "total", ts, (ts - T0) / timedelta(minutes=1))
                                 for ts in stamps])


def share(key: str, frame: PredictionFrame, span: TimeRange) -> PredictionFrame:
    return frame.within(span)


class Model:
    """A model the test holds: the first request blocks until released, so windows pile up behind it."""

    def __init__(self, fail: dict[TimeRange, Exception] | None = None) -> None:
        self.calls: list[tuple[str, TimeRange]] = []
        self.first_started, self.release = threading.Event(), threading.Event()
        self.fail = fail or {}
        self._lock = threading.Lock()

    def run(self, key: str, span: TimeRange) -> PredictionFrame:
        with self._lock:
            self.calls.append((key, span))
            first = len(self.calls) == 1
        if first:
            self.first_started.set()
            assert self.release.wait(10)
        if span in self.fail:
            raise self.fail[span]
        return rows_for(span)


def pile_up(joiner: WindowJoiner[str], model: Model, first: tuple[str, TimeRange],
            then: list[tuple[str, TimeRange]]) -> list[object]:
    """`first` is in flight while every one of `then` arrives; returns each one's result or error, in order."""
    def call(item: tuple[str, TimeRange]) -> object:
        try:
            return joiner.execute(*item)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(then) + 1) as pool:
        futures = [pool.submit(call, first)]
        assert model.first_started.wait(10)
        futures += [pool.submit(call, item) for item in then]
        time.sleep(0.2)  # every one of `then` is waiting now
        model.release.set()
        return [future.result(10) for future in futures]


def test_windows_that_wait_for_their_model_go_as_one_request_and_each_gets_its_own_rows():
    model = Model()
    joiner = WindowJoiner(model.run, share, limit=8)
    results = pile_up(joiner, model, ("m", window(0)), [("m", window(i)) for i in (3, 1, 2)])
    assert model.calls == [("m", window(0)), ("m", TimeRange(window(1).start, window(3).end))]
    for index, result in zip((0, 3, 1, 2), results, strict=True):
        assert isinstance(result, PredictionFrame)
        assert result.rows == rows_for(window(index)).rows


def test_only_consecutive_windows_are_joined_and_at_most_limit_of_them():
    model = Model()
    joiner = WindowJoiner(model.run, share, limit=2)
    later = [("m", window(i)) for i in (1, 2, 3, 6)]
    results = pile_up(joiner, model, ("m", window(0)), later)
    # The joined pair first; the two lone windows each in their own thread, in either order.
    assert model.calls[1] == ("m", TimeRange(window(1).start, window(2).end))
    assert sorted(model.calls[2:], key=lambda c: c[1].start) == [("m", window(3)), ("m", window(6))]
    assert [r.rows for r in results[1:]] == [rows_for(w).rows for _, w in later]


def test_other_models_never_wait():
    model = Model()
    joiner = WindowJoiner(model.run, share, limit=8)
    with ThreadPoolExecutor(2) as pool:
        blocked = pool.submit(joiner.execute, "a", window(0))
        assert model.first_started.wait(10)
        assert joiner.execute("b", window(0)).rows == rows_for(window(0)).rows  # while a's request hangs
        model.release.set()
        assert blocked.result(10).rows == rows_for(window(0)).rows


@pytest.mark.parametrize("failure", [NoDataError("no complete row"), TransientError("gordo: connection reset")])
def test_a_joined_request_that_fails_is_run_window_by_window_each_with_its_own_outcome(failure):
    """As without joining: each window's own call, its own error (and attempt), its own report to the breaker."""
    joined = TimeRange(window(1).start, window(3).end)
    model = Model(fail={joined: failure, window(2): NoDataError("no complete row in w2")})
    joiner = WindowJoiner(model.run, share, limit=8)
    results = pile_up(joiner, model, ("m", window(0)), [("m", window(i)) for i in (1, 2, 3)])
    assert model.calls[1] == ("m", joined)
    assert sorted(span.start for _, span in model.calls[2:]) == [window(i).start for i in (1, 2, 3)]
    assert results[1].rows == rows_for(window(1)).rows and results[3].rows == rows_for(window(3)).rows
    assert isinstance(results[2], NoDataError) and "w2" in str(results[2])


def test_a_joined_request_refused_by_the_open_breaker_is_every_window_s_answer_and_not_repeated():
    joined = TimeRange(window(1).start, window(2).end)
    down = PeerDown("gordo p at host", T0, 4.0, "connection refused")
    model = Model(fail={joined: down})
    joiner = WindowJoiner(model.run, share, limit=8)
    results = pile_up(joiner, model, ("m", window(0)), [("m", window(1)), ("m", window(2))])
    assert [span for _, span in model.calls] == [window(0), joined]
    assert results[1] is down and results[2] is down


def test_a_window_with_no_rows_in_the_joined_answer_is_run_alone():
    joined = TimeRange(window(1).start, window(2).end)

    def gapped_share(key: str, frame: PredictionFrame, span: TimeRange) -> PredictionFrame:
        return frame.with_rows([]) if span == window(2) else frame.within(span)

    model = Model()
    joiner = WindowJoiner(model.run, gapped_share, limit=8)
    results = pile_up(joiner, model, ("m", window(0)), [("m", window(1)), ("m", window(2))])
    assert [span for _, span in model.calls] == [window(0), joined, window(2)]
    assert results[2].rows == rows_for(window(2)).rows


@pytest.mark.parametrize("limit", [0, 1])
def test_a_limit_of_one_window_calls_straight_through(limit):
    model = Model()
    model.release.set()
    joiner = WindowJoiner(model.run, share, limit=limit)
    assert joiner.execute("m", window(0)).rows == rows_for(window(0)).rows
    assert model.calls == [("m", window(0))]


def test_a_window_waiting_for_its_models_request_holds_no_model_slot():
    """Two model slots: one request of model m in flight, two more windows of m waiting behind it. Model
    n still gets a slot and runs meanwhile; the waiting windows then go together in the slot given back."""
    slots = ModelSlots(2)
    model = Model()
    joiner = WindowJoiner(model.run, share, limit=8)
    n_ran = threading.Event()

    def call(key: str, index: int) -> object:
        with slots.slot():
            frame = joiner.execute(key, window(index))
            if key == "n":
                n_ran.set()
            return frame

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(call, "m", 0)]
        assert model.first_started.wait(10)
        futures += [pool.submit(call, "m", i) for i in (1, 2)]
        time.sleep(0.2)  # both waiting for m's request, each after taking a slot
        futures.append(pool.submit(call, "n", 0))
        assert n_ran.wait(5), "model n found no free slot: the waiting windows held theirs"
        model.release.set()
        results = [future.result(10) for future in futures]
    expected = [rows_for(window(i)).rows for i in (0, 1, 2, 0)]
    assert [frame.rows for frame in results] == expected
    assert model.calls == [("m", window(0)), ("n", window(0)), ("m", TimeRange(window(1).start, window(2).end))]
    with slots.slot(), slots.slot():
        pass  # both free again: nothing was kept or released twice
