"""Tasks finished per hour, the settled hours kept in `task_hours` by the scheduler.

The overview charts the last 24 hours of finished tasks. Counted from the ledger, that is a scan of every
task finished in those hours (430,000 at 9,000 models every 30 minutes) on a web server's first view. An
hour's counts no longer change once it has been over for SETTLED_AFTER (a task's finished_at is stamped just
before its commit), so the scheduler counts each such hour once and stores it; a view counts from the
ledger only the hours not stored (the current one, the one just ended, or all of them when no scheduler
runs).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from latigo.storage.db import utc_from_db, write_transaction
from latigo.storage.tables import TASK_HOURS, TASKS
from latigo.storage.upsert import insert_new

HOUR = timedelta(hours=1)
SETTLED_AFTER = timedelta(minutes=5)
KEPT_HOURS = 25
"""Hours the scheduler keeps counted: the chart's 24 and the one before."""

Counts = dict[datetime, tuple[int, int]]
"""Per hour (its start, UTC): (tasks done, tasks failed) that finished in it."""


def hour_of(instant: datetime) -> datetime:
    return instant.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def settled(hour: datetime, now: datetime) -> bool:
    return now >= hour + HOUR + SETTLED_AFTER


def bucket(connection: Connection, column: Any, seconds: int) -> Any:
    """Which `seconds`-wide bucket of the Unix epoch a timestamp falls in (an integer)."""
    if connection.dialect.name == "postgresql":
        return sa.cast(sa.func.floor(sa.extract("epoch", column) / seconds), sa.BigInteger)
    return sa.cast(sa.func.strftime("%s", column), sa.Integer).op("/")(seconds)


def count_from_ledger(connection: Connection, hours: Iterable[datetime]) -> Counts:
    """Done and failed tasks per hour of `hours`, from the ledger's (state, finished_at) index: one
    grouped read from the first of them on."""
    wanted = sorted(set(hours))
    if not wanted:
        return {}
    tasks = TASKS.c
    key = bucket(connection, tasks.finished_at, 3600).label("bucket")
    rows = connection.execute(
        sa.select(key, tasks.state, sa.func.count())
        .where(tasks.state.in_(("done", "failed")), tasks.finished_at >= wanted[0],
               tasks.finished_at < wanted[-1] + HOUR)
        .group_by(key, tasks.state)).all()
    found = {(int(b), state): n for b, state, n in rows}
    out: Counts = {}
    for hour in wanted:
        index = int(hour.timestamp()) // 3600
        out[hour] = (found.get((index, "done"), 0), found.get((index, "failed"), 0))
    return out


def stored(connection: Connection, since: datetime) -> Counts:
    """The settled hours the scheduler has counted, from `since` on."""
    table = TASK_HOURS.c
    return {hour: (done, failed) for hour, done, failed in (
        (utc_from_db(h), d, f) for h, d, f in connection.execute(
            sa.select(table.hour, table.done, table.failed).where(table.hour >= since)))
        if hour is not None}


def keep_settled_hours(engine: Engine, now: datetime | None = None) -> str:
    """The scheduler's chore: count each settled hour of the last KEPT_HOURS not yet stored, store it, and
    drop the hours before them. Returns a line to log, or ''."""
    now = now or datetime.now(timezone.utc)
    newest = hour_of(now) - HOUR
    hours = [newest - i * HOUR for i in range(KEPT_HOURS) if settled(newest - i * HOUR, now)]
    with write_transaction(engine) as connection:
        have = stored(connection, min(hours)) if hours else {}
        missing = [hour for hour in hours if hour not in have]
        counts = count_from_ledger(connection, missing)
        if counts:
            insert_new(connection, TASK_HOURS, [{"hour": hour, "done": done, "failed": failed}
                                                for hour, (done, failed) in counts.items()], key="hour")
        connection.execute(sa.delete(TASK_HOURS).where(TASK_HOURS.c.hour < newest - KEPT_HOURS * HOUR))
    return f"{len(counts)} hours counted" if counts else ""
