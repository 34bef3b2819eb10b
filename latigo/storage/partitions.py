"""Time partitions of prediction_values on PostgreSQL: created ahead of need, dropped for retention.

Partitions are [start, start + size) on the epoch-aligned grid of `predictions.partition_size` (a day
by default), named prediction_values_p<start>. They are created by `latigo db upgrade` and by the
scheduler for the days ahead, and on demand before a task stores rows outside them (a backfill into
the past); creating one takes a short lock on the parent table, so it happens in its own transaction,
never inside a task's. Retention drops whole partitions — no DELETE storm, no bloat. A partition's
bounds are read from the catalog, so a changed size only affects new partitions and never overlaps
old ones. SQLite has one table and none of this.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from latigo.storage.tables import PARTITION_PREFIX, PREDICTION_VALUES
from latigo.timegrid import floor
from latigo.types import TimeRange

log = logging.getLogger(__name__)

_LOCK_KEY = 0x6C617469  # pg_advisory_xact_lock key: one partition creator at a time
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclass(frozen=True)
class Partition:
    name: str
    span: TimeRange


class Partitions:
    """The partitions of one database; remembers which ranges exist so a task's check costs nothing."""

    def __init__(self, engine: Engine, size: timedelta = timedelta(days=1)) -> None:
        self.engine, self.size = engine, size
        self.enabled = engine.dialect.name == "postgresql"
        self._covered: list[TimeRange] = []
        self._lock = threading.Lock()

    def ensure(self, start: datetime, end: datetime) -> int:
        """Partitions covering [start, end); returns how many were created."""
        if not self.enabled or end <= start or self._is_covered(start, end):
            return 0
        with self._lock, self.engine.connect() as connection, connection.begin():
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            existing = list_partitions(connection)
            created = 0
            for gap in _gaps(_slots(start, end, self.size), [p.span for p in existing]):
                connection.exec_driver_sql(_create_sql(gap))
                created += 1
                log.info("created prediction partition for %s", gap)
            existing = list_partitions(connection)
        self._covered = _merge([p.span for p in existing])
        return created

    def ensure_ahead(self, now: datetime, behind: timedelta, ahead: timedelta) -> int:
        return self.ensure(floor(now - behind, self.size), now + ahead)

    def drop_before(self, cutoff: datetime) -> list[str]:
        """Drop every partition that ends at or before `cutoff`, one per transaction (each drop holds the
        parent's lock until it commits, and deleting a day's files takes a moment); returns their names."""
        if not self.enabled:
            return []
        with self.engine.connect() as connection, connection.begin():
            old = [p for p in list_partitions(connection) if p.span.end <= cutoff]
        dropped = []
        for partition in old:
            with self._lock, self.engine.connect() as connection, connection.begin():
                connection.exec_driver_sql(f'DROP TABLE IF EXISTS "{partition.name}"')
            dropped.append(partition.name)
        self.forget()
        return dropped

    def forget(self) -> None:
        """Read the catalog again next time (a partition was dropped by another process)."""
        self._covered = []

    def _is_covered(self, start: datetime, end: datetime) -> bool:
        return any(span.start <= start and end <= span.end for span in self._covered)


def list_partitions(connection: Connection) -> list[Partition]:
    """The partitions of prediction_values with their bounds, oldest first."""
    connection.exec_driver_sql("SET LOCAL timezone = 'UTC'")
    rows = connection.execute(sa.text(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = CAST(:parent AS regclass)"
    ), {"parent": PREDICTION_VALUES}).all()
    partitions = []
    for name, bound in rows:
        match = _BOUND.search(bound or "")
        if match is None:
            raise RuntimeError(f"partition {name} of {PREDICTION_VALUES} has bounds latigo does not read: {bound}")
        partitions.append(Partition(name, TimeRange(_timestamp(match.group(1)), _timestamp(match.group(2)))))
    return sorted(partitions, key=lambda p: p.span.start)


def _timestamp(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace(" ", "T"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _slots(start: datetime, end: datetime, size: timedelta) -> list[TimeRange]:
    first = floor(start, size)
    count = -(-(end - first) // size)
    return [TimeRange(first + i * size, first + (i + 1) * size) for i in range(count)]


def _gaps(slots: list[TimeRange], existing: list[TimeRange]) -> list[TimeRange]:
    """The parts of the slots no existing partition covers."""
    gaps = []
    for slot in slots:
        cursor = slot.start
        for span in sorted(existing):
            if span.end <= cursor or span.start >= slot.end:
                continue
            if span.start > cursor:
                gaps.append(TimeRange(cursor, span.start))
            cursor = max(cursor, span.end)
        if cursor < slot.end:
            gaps.append(TimeRange(cursor, slot.end))
    return gaps


def _merge(spans: list[TimeRange]) -> list[TimeRange]:
    merged: list[TimeRange] = []
    for span in sorted(spans):
        if merged and span.start <= merged[-1].end:
            merged[-1] = TimeRange(merged[-1].start, max(merged[-1].end, span.end))
        else:
            merged.append(span)
    return merged


def partition_name(start: datetime) -> str:
    return f"{PARTITION_PREFIX}{start.astimezone(timezone.utc):%Y%m%dt%H%M}"


def _create_sql(span: TimeRange) -> str:
    return (f'CREATE TABLE IF NOT EXISTS "{partition_name(span.start)}" PARTITION OF {PREDICTION_VALUES} '
            f"FOR VALUES FROM ('{span.start.isoformat()}') TO ('{span.end.isoformat()}')")
