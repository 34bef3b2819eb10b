"""Circuit breakers: a peer that is down is not a task's failure.

Each peer latigo depends on (a Gordo project's server, the sensor source, a required sink) gets one
`CircuitBreaker` per process. Calls report how they went: a success closes the breaker; a connection-level
failure (refused, reset, timed out, DNS, or a 502/503/504 from a gateway) counts, and `threshold` of them in
a row, with no success between, open it. While open, calls are refused at once with `PeerDown` (the
executor hands the task back for later without spending an attempt), except one probe at a time after a
backoff that doubles up to `max_delay`; the probe's success closes the breaker and the backlog drains.

What stays a task's own transient failure: one model's 503 while others answer, one big request timing
out. Successes in between keep the count below the threshold, so those keep the bounded retry by
redelivery.

A call's last failure that does not open the breaker by itself waits for the verdict (`failed(...,
last=True)`, up to `verdict_wait`): when the peer has just gone away, the other calls in flight fail
within moments and open it, and the waiting call then hands its task back like every later one instead
of spending an attempt on the outage; a success meanwhile (or no verdict within the wait) makes it the
call's own failure.

Transitions are logged once, exported as `latigo_peer_up{peer}` and `latigo_peer_outage_seconds_total{peer}`,
and passed to listeners (the executor records them in the database for `latigo status` and the web page).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from latigo.errors import TransientError
from latigo.observability import PEER_OUTAGE, PEER_UP

log = logging.getLogger(__name__)

GATEWAY_STATUS = frozenset({502, 503, 504})
"""What a gateway (an ingress, a load balancer) answers when the server behind it is not there."""


class PeerDown(TransientError):
    """The peer's breaker is open: the call was not made. Not a failure of the task that needed it."""

    def __init__(self, peer: str, since: datetime, retry_in: float, reason: str) -> None:
        super().__init__(f"{peer} is down since {since.isoformat(timespec='seconds')} ({reason}); "
                         f"next probe in {retry_in:.1f}s")
        self.peer, self.since, self.retry_in, self.reason = peer, since, retry_in, reason


@dataclass(frozen=True)
class PeerState:
    """A breaker's state for status pages: `down_since` is None while the peer is up."""

    peer: str
    down_since: datetime | None
    reason: str
    failures: int


Listener = Callable[[PeerState], None]


class CircuitBreaker:
    """One peer's breaker; thread-safe (every worker of an executor shares it)."""

    def __init__(self, peer: str, threshold: int = 5, base_delay: float = 1.0, max_delay: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, verdict_wait: float = 10.0) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.peer, self.threshold = peer, threshold
        self.base_delay, self.max_delay = base_delay, max_delay
        self.verdict_wait = verdict_wait
        """Seconds a caller's last failure waits for the breaker's verdict (see failed)."""
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        """Notified when the breaker opens and when a call succeeds (what a waiting failure waits for)."""
        self._successes = 0
        self._failures = 0
        self._opened_at: float | None = None
        self._down_since: datetime | None = None
        self._reason = ""
        self._probes_failed = 0
        self._next_probe = 0.0
        self._probing = False
        self._probe_started = 0.0
        self.probe_timeout = 2 * max_delay + 60.0
        """Seconds after which a probe that never reported is presumed lost."""
        self._accounted = 0.0
        self._listeners: list[Listener] = []
        self.refused = 0
        """Calls refused while open (not sent)."""
        PEER_UP.labels(peer=peer).set(1)

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._opened_at is not None

    def state(self) -> PeerState:
        with self._lock:
            self._account()
            return PeerState(self.peer, self._down_since, self._reason, self._failures)

    def listen(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    # ------------------------------------------------ around a call

    def before_call(self) -> bool:
        """Raise PeerDown when the breaker is open and this call is not the probe; True for the probe."""
        with self._lock:
            if self._opened_at is None:
                return False
            self._account()
            now = self._clock()
            # A probe that never reported (its caller failed before an answer) does not block the next for long.
            stale = self._probing and now - self._probe_started > self.probe_timeout
            if (not self._probing or stale) and now >= self._next_probe:
                self._probing, self._probe_started = True, now
                return True
            self.refused += 1
            raise self._down_error(now)

    def down_error(self) -> PeerDown:
        """The error for a call made while the breaker is open (e.g. the one whose failure opened it)."""
        with self._lock:
            return self._down_error(self._clock())

    def _down_error(self, now: float) -> PeerDown:
        retry_in = max(self._next_probe - now, 0.0) or self._delay()
        return PeerDown(self.peer, self._down_since or _utcnow(), retry_in, self._reason)

    def succeeded(self) -> None:
        with self._lock:
            self._failures = 0
            self._successes += 1
            self._changed.notify_all()
            if self._opened_at is None:
                return
            self._account()
            outage = self._clock() - self._opened_at
            self._opened_at, self._down_since, self._reason = None, None, ""
            self._probing, self._probes_failed = False, 0
            state = PeerState(self.peer, None, "", 0)
            listeners = list(self._listeners)
        log.warning("peer %s is back after %.0fs down", self.peer, outage)
        PEER_UP.labels(peer=self.peer).set(1)
        _notify(listeners, state)

    def failed(self, reason: str, probe: bool = False, last: bool = False) -> bool:
        """A connection-level failure (of the probe, when `probe`); True when the breaker is open afterwards.

        `last`: the caller gives up after this failure (it would become its task's). One that leaves the
        breaker closed then waits up to `verdict_wait` seconds for it to open (True) or for any call to
        succeed (False)."""
        with self._lock:
            successes = self._successes
            is_open, opened = self._count_failure(reason, probe)
            if not is_open and last and self.verdict_wait > 0:
                is_open = self._wait_for_verdict(successes, self.verdict_wait)
        if opened is not None:
            self._announce_open(opened)
        return is_open

    def _count_failure(self, reason: str, probe: bool) -> tuple[bool, PeerState | None]:
        """(open afterwards, the state to announce when this failure opened it); under the lock."""
        now = self._clock()
        if self._opened_at is not None:
            self._account()
            if probe and self._probing:
                self._probing = False
                self._probes_failed += 1
                self._next_probe = now + self._delay()
                self._reason = reason
            return True, None
        self._failures += 1
        if self._failures < self.threshold:
            return False, None
        self._opened_at, self._accounted = now, now
        self._down_since = _utcnow()
        self._reason = reason
        self._probes_failed = 0
        self._next_probe = now + self._delay()
        self._changed.notify_all()
        return True, PeerState(self.peer, self._down_since, reason, self._failures)

    def _wait_for_verdict(self, successes: int, wait: float) -> bool:
        """Under the lock: wait (real seconds) until the breaker opens or a call succeeds after `successes`."""
        deadline = time.monotonic() + wait
        while self._opened_at is None and self._successes == successes:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._changed.wait(left)
        return self._opened_at is not None

    def _announce_open(self, state: PeerState) -> None:
        with self._lock:
            listeners = list(self._listeners)
        log.error("peer %s is down (%d connection failures in a row, last: %s): tasks that need it wait, "
                  "one probe at a time", self.peer, self.threshold, state.reason)
        PEER_UP.labels(peer=self.peer).set(0)
        _notify(listeners, state)

    def reset(self) -> None:
        """Closed, with no failures counted and no listeners, without telling anyone."""
        with self._lock:
            self._failures, self._opened_at, self._down_since, self._reason = 0, None, None, ""
            self._probing, self._probes_failed, self._next_probe = False, 0, 0.0
            self._listeners.clear()
        PEER_UP.labels(peer=self.peer).set(1)

    # ------------------------------------------------ internals (under the lock)

    def _delay(self) -> float:
        return min(self.max_delay, self.base_delay * 2 ** self._probes_failed)

    def _account(self) -> None:
        """Add the time since the last look to the outage counter while open."""
        if self._opened_at is None:
            return
        now = self._clock()
        PEER_OUTAGE.labels(peer=self.peer).inc(max(now - self._accounted, 0.0))
        self._accounted = now


def _notify(listeners: list[Listener], state: PeerState) -> None:
    for listener in listeners:
        try:
            listener(state)
        except Exception as exc:  # a status store that fails must not change what the breaker decided
            log.warning("recording the state of peer %s failed: %s", state.peer, type(exc).__name__)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class PeerRegistry:
    """The process's breakers by peer name: adapters ask for theirs, the executor and /readyz read them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._listeners: list[Listener] = []
        self.settings: dict[str, float] = {"threshold": 5, "base_delay": 1.0, "max_delay": 30.0}

    def breaker(self, peer: str) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(peer)
            if breaker is None:
                breaker = CircuitBreaker(peer, threshold=int(self.settings["threshold"]),
                                         base_delay=self.settings["base_delay"], max_delay=self.settings["max_delay"])
                for listener in self._listeners:
                    breaker.listen(listener)
                self._breakers[peer] = breaker
            return breaker

    def listen(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)
            breakers = list(self._breakers.values())
        for breaker in breakers:
            breaker.listen(listener)

    def configure(self, threshold: int, base_delay: float, max_delay: float) -> None:
        with self._lock:
            self.settings = {"threshold": threshold, "base_delay": base_delay, "max_delay": max_delay}

    def reset(self) -> None:
        """Close every breaker and drop the listeners (tests: one test's outage is not the next one's)."""
        with self._lock:
            breakers = list(self._breakers.values())
            self._listeners.clear()
        for breaker in breakers:
            breaker.reset()

    def down(self) -> list[PeerState]:
        with self._lock:
            breakers = list(self._breakers.values())
        return [state for state in (b.state() for b in breakers) if state.down_since is not None]


PEERS = PeerRegistry()
"""This process's breakers."""
