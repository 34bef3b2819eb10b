"""The circuit breaker's rules, on a clock the test moves."""

from __future__ import annotations

import threading
import time

import pytest

from latigo.observability import REGISTRY
from latigo.peers import CircuitBreaker, PeerDown, PeerRegistry, PeerState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, peer: str = "gordo test", **kwargs: float) -> CircuitBreaker:
    return CircuitBreaker(peer, threshold=int(kwargs.pop("threshold", 3)), base_delay=kwargs.pop("base_delay", 1.0),
                          max_delay=kwargs.pop("max_delay", 8.0), clock=clock)


def metric(name: str, peer: str) -> float:
    return REGISTRY.get_sample_value(name, {"peer": peer}) or 0.0


def test_a_run_of_failures_opens_it_and_calls_are_refused_without_being_made() -> None:
    clock = Clock()
    b = breaker(clock, "peer a")
    assert b.before_call() is False
    assert [b.failed("refused") for _ in range(3)] == [False, False, True]
    assert b.is_open and metric("latigo_peer_up", "peer a") == 0
    with pytest.raises(PeerDown, match="peer a is down since .* \\(refused\\); next probe in 1.0s") as refused:
        b.before_call()
    assert refused.value.retry_in == pytest.approx(1.0) and b.refused == 1


def test_successes_between_failures_keep_it_closed() -> None:
    """One model's 503 while others answer: never an outage."""
    clock = Clock()
    b = breaker(clock)
    for _ in range(20):
        b.failed("503")
        b.failed("503")
        b.succeeded()
    assert not b.is_open


def _last_failure_in_thread(b: CircuitBreaker) -> tuple[threading.Thread, list[bool]]:
    verdict: list[bool] = []
    thread = threading.Thread(target=lambda: verdict.append(b.failed("refused", last=True)))
    thread.start()
    time.sleep(0.2)
    assert thread.is_alive(), "the last failure did not wait for the verdict"
    return thread, verdict


def test_a_last_failure_waits_and_is_the_outage_when_the_calls_in_flight_open_it() -> None:
    """The first calls to meet an outage: their tasks are handed back like every later one."""
    b = breaker(Clock(), "peer verdict open")
    thread, verdict = _last_failure_in_thread(b)
    b.failed("refused")
    b.failed("refused")
    thread.join(5)
    assert verdict == [True] and b.is_open


def test_a_last_failure_is_the_calls_own_when_another_call_succeeds_meanwhile() -> None:
    b = breaker(Clock(), "peer verdict success")
    thread, verdict = _last_failure_in_thread(b)
    b.succeeded()
    thread.join(5)
    assert verdict == [False] and not b.is_open


def test_a_last_failure_with_no_verdict_is_the_calls_own_after_the_wait() -> None:
    b = CircuitBreaker("peer verdict none", threshold=3, clock=Clock(), verdict_wait=0.3)
    began = time.monotonic()
    assert b.failed("refused", last=True) is False
    assert 0.3 <= time.monotonic() - began < 3
    assert [b.failed("refused"), b.failed("refused")] == [False, True], "the waited failure counts"


def test_one_probe_at_a_time_with_a_doubling_capped_backoff_then_closed_by_a_success() -> None:
    clock = Clock()
    b = breaker(clock, "peer b", max_delay=4.0)
    for _ in range(3):
        b.failed("reset")
    delays = []
    for _ in range(5):
        with pytest.raises(PeerDown) as early:
            b.before_call()
        clock.now += early.value.retry_in
        assert b.before_call() is True  # the probe
        with pytest.raises(PeerDown):
            b.before_call()  # nobody else while it runs
        assert b.failed("reset", probe=True)
        delays.append(early.value.retry_in)
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0]
    clock.now += 4.0
    assert b.before_call() is True
    b.succeeded()
    assert not b.is_open and b.before_call() is False and metric("latigo_peer_up", "peer b") == 1


def test_a_failure_of_a_call_that_is_not_the_probe_does_not_end_the_probe() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.failed("timeout")
    clock.now += 1.0
    assert b.before_call() is True
    b.failed("timeout")  # a call that started before the breaker opened
    with pytest.raises(PeerDown):
        b.before_call()  # the probe is still out


def test_a_probe_that_never_reports_is_replaced_after_its_timeout() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(3):
        b.failed("dns")
    clock.now += 1.0
    assert b.before_call() is True
    clock.now += b.probe_timeout + 1
    assert b.before_call() is True


def test_outage_seconds_and_listeners() -> None:
    clock = Clock()
    seen: list[PeerState] = []
    b = breaker(clock, "peer c")
    b.listen(seen.append)
    before = metric("latigo_peer_outage_seconds_total", "peer c")
    for _ in range(3):
        b.failed("refused")
    clock.now += 30
    assert b.state().down_since is not None
    clock.now += 12
    b.succeeded()
    assert metric("latigo_peer_outage_seconds_total", "peer c") - before == pytest.approx(42)
    assert [(s.peer, s.down_since is not None, s.reason) for s in seen] == [("peer c", True, "refused"),
                                                                          ("peer c", False, "")]


def test_a_listener_that_fails_does_not_change_the_decision() -> None:
    clock = Clock()
    b = breaker(clock, "peer d")

    def broken(state: PeerState) -> None:
        raise RuntimeError("database down")

    b.listen(broken)
    for _ in range(3):
        b.failed("refused")
    assert b.is_open


def test_the_registry_gives_one_breaker_per_peer_and_lists_the_open_ones() -> None:
    peers = PeerRegistry()
    peers.configure(threshold=1, base_delay=1.0, max_delay=30.0)
    a, again, other = peers.breaker("x"), peers.breaker("x"), peers.breaker("y")
    assert a is again and a is not other
    a.failed("refused")
    assert [s.peer for s in peers.down()] == ["x"]
    peers.reset()
    assert peers.down() == [] and not a.is_open
