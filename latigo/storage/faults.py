"""Which database errors are faults of the infrastructure, not of the task being worked on.

A lost connection, a server restarting, a lock held too long, a serialization conflict: the task is
fine and must be released and redelivered, never marked failed. What is left (a value the schema
cannot hold, a constraint the row breaks) is about the data itself and retrying cannot help.
"""

from __future__ import annotations

import logging
import random
import threading

import sqlalchemy.exc as sa_exc

from latigo.errors import describe_exception
from latigo.observability import DATABASE_FAULTS, DATABASE_READY

log = logging.getLogger("latigo.executor")

# PostgreSQL SQLSTATEs that mean "try again later": serialization failure, deadlock, lock not available,
# statement timeout / cancel, the server shutting down or starting, too many connections.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03", "53300", "08000",
                                  "08003", "08006", "08001", "08004"})
_SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy", "disk i/o error")


def is_infrastructure_fault(exc: BaseException) -> bool:
    """True for errors of the database itself or the way to it (see module docstring), and a partition
    that disappeared under a task (it is created again on the next attempt)."""
    from latigo.storage.predictions import MissingPartition

    if isinstance(exc, (sa_exc.DisconnectionError, sa_exc.TimeoutError, MissingPartition)):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return True
        code = getattr(exc.orig, "pgcode", None)
        if code in _RETRYABLE_SQLSTATES:
            return True
        message = str(exc.orig).lower()
        return any(text in message for text in _SQLITE_BUSY)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return False  # a provider's network trouble: the provider reports it as TransientError
    return False


def is_unrecordable(exc: BaseException) -> bool:
    """A statement the database refused because of the values in it (too long, out of range, a broken
    constraint): the message can never be recorded as it is."""
    return isinstance(exc, (sa_exc.DataError, sa_exc.IntegrityError)) and not is_infrastructure_fault(exc)


class DatabaseFaults:
    """Infrastructure faults seen by the workers: the backoff before the next claim, and readiness."""

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base, self.cap = base, cap
        self._lock = threading.Lock()
        self._streak = 0
        self.total = 0

    def fault(self, exc: BaseException, doing: str) -> float:
        """Record a fault; returns how long the worker should wait before touching the database again."""
        with self._lock:
            self._streak += 1
            self.total += 1
            streak = self._streak
        DATABASE_FAULTS.inc()
        DATABASE_READY.set(0)
        delay = random.uniform(self.base / 2, min(self.cap, self.base * 2 ** (streak - 1)))
        log.warning("database fault while %s (%s); released, next try in %.1fs", doing, describe_exception(exc),
                    delay)
        return delay

    def ok(self) -> None:
        with self._lock:
            if self._streak:
                log.info("database reachable again")
            self._streak = 0
        DATABASE_READY.set(1)

    @property
    def ready(self) -> bool:
        with self._lock:
            return self._streak == 0
