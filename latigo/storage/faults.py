"""Which database errors are faults of the infrastructure, not of the task being worked on.

A lost connection, a server restarting, a lock held too long, a serialization conflict: the task is
fine and must be released and redelivered, never marked failed. What is left (a value the schema
cannot hold, a constraint the row breaks) is about the data itself and retrying cannot help.
"""

from __future__ import annotations

import sqlalchemy.exc as sa_exc

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
