"""The task ledger's SQL and its database queue's: every hot-path statement written out whole, by name.

The ledger (latigo.lifecycle) owns the `tasks` table and the database queue's `task_queue` table beside it.
On PostgreSQL its two hot statements span both tables, or the ledger and the predictions: the claim starts
the task in the same statement (one round trip), and the predictions' upsert carries the task's `done` mark.
Each is written here as the text the database receives, never put together at runtime from another
module's text, so what runs can be read, reviewed and EXPLAINed as it stands; where a dialect needs its
own variant, each variant is written whole. They are text rather than the expression language: building
them on every call cost more than running them. The queue (latigo.queues.database) runs these statements
and the few helpers below (enqueue, cancel, counts) and has no SQL of its own.

The texts that also stand alone elsewhere (the claim inside CLAIM_AND_START, the predictions' upsert inside
ROWS_AND_DONE) are repeated on purpose; tests/unit/test_ledger_statements.py holds them equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from latigo.storage.tables import TASK_QUEUE, UtcDateTime
from latigo.storage.upsert import insert_new

# ---------------------------------------------------------------------------------------------- the ledger

START = sa.text(
    "UPDATE tasks SET state = 'running', runs = runs + 1, executor = :executor, started_at = :now, "
    "lost = lost + CASE WHEN tasks.state = 'running' THEN 1 ELSE 0 END "
    "WHERE task_id = :task_id AND tasks.state IN ('queued', 'running') RETURNING attempts, lost"
).bindparams(sa.bindparam("now", type_=UtcDateTime))
"""A task starts unless it is finished; one found `running` was started by an executor that never finished
it, and that run counts as lost."""

FINISH = sa.text(
    "UPDATE tasks SET state = 'done', rows = :rows, duration_ms = :duration_ms, finished_at = :now, "
    "error = :note, revision = :revision WHERE task_id = :task_id"
).bindparams(sa.bindparam("now", type_=UtcDateTime))
"""The task's `done` mark, on its own: after a COPY, on SQLite, and again when new series were written."""

CLAIM_AND_START_POSTGRESQL = sa.text(
    "WITH claimed AS ("
    "UPDATE task_queue SET available_at = now() + make_interval(secs => :seconds), lease_owner = :owner, "
    "deliveries = deliveries + 1 WHERE task_id = (SELECT task_id FROM task_queue WHERE available_at <= now() "
    "ORDER BY available_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING task_id, body, deliveries"
    "), started AS ("
    "UPDATE tasks SET state = 'running', runs = runs + 1, executor = :executor, started_at = :now, "
    "lost = lost + CASE WHEN tasks.state = 'running' THEN 1 ELSE 0 END "
    "FROM claimed WHERE tasks.task_id = claimed.task_id AND tasks.state IN ('queued', 'running') "
    "RETURNING tasks.task_id, tasks.attempts, tasks.lost) "
    "SELECT claimed.task_id, claimed.body, claimed.deliveries, started.attempts, started.lost "
    "FROM claimed LEFT JOIN started ON started.task_id = claimed.task_id"
).bindparams(sa.bindparam("now", type_=UtcDateTime))
"""PostgreSQL: the queue's claim and START in one statement. `attempts` is NULL when the task was neither
queued nor running (or is unknown to the ledger): START then finds out why."""

ROWS_AND_DONE_POSTGRESQL = (
    "WITH written AS ("
    "INSERT INTO prediction_values (series_id, ts, value) SELECT s.id, u.ts, u.value "
    "FROM unnest(%(outputs)s::text[], %(tags)s::text[], %(stamps)s::timestamptz[], %(values)s::float8[]) "
    "AS u(output, tag, ts, value) JOIN series s ON s.project = %(project)s AND s.model = %(model)s "
    "AND s.output = u.output AND s.tag = u.tag "
    "ON CONFLICT (series_id, ts) DO UPDATE SET value = EXCLUDED.value RETURNING 1"
    "), follow_up AS ("
    "UPDATE tasks SET state = 'done', rows = %(rows)s, duration_ms = %(duration_ms)s, finished_at = %(now)s, "
    "error = %(note)s, revision = %(revision)s WHERE task_id = %(task_id)s"
    ") SELECT count(*) FROM written"
)
"""PostgreSQL, a frame below the COPY size: the predictions' upsert and FINISH as one statement (a
data-modifying CTE runs to completion whether or not it is read), returning how many rows were written. A
DBAPI text (psycopg2's placeholders): the prediction writer runs it on its raw cursor with the frame's
arrays and FINISH's parameters."""

# ---------------------------------------------------------------------------------------------- the queue


@dataclass(frozen=True)
class QueueStatements:
    """The database queue's statements for one dialect. Settling ones touch a row only while it still
    carries the claim (task id, owner, delivery count): an executor whose lease expired settles nothing."""

    claim: Any
    nack: Any
    release: Any
    renew: Any
    ack: Any


ACK = sa.text("DELETE FROM task_queue WHERE task_id = :task_id AND lease_owner = :owner AND deliveries = :deliveries")

QUEUE_POSTGRESQL = QueueStatements(
    claim=sa.text(
        "UPDATE task_queue SET available_at = now() + make_interval(secs => :seconds), lease_owner = :owner, "
        "deliveries = deliveries + 1 WHERE task_id = (SELECT task_id FROM task_queue WHERE available_at <= now() "
        "ORDER BY available_at LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING task_id, body, deliveries"),
    nack=sa.text(
        "UPDATE task_queue SET available_at = now() + make_interval(secs => :seconds), lease_owner = NULL "
        "WHERE task_id = :task_id AND lease_owner = :owner AND deliveries = :deliveries"),
    release=sa.text(
        "UPDATE task_queue SET available_at = now() + make_interval(secs => :seconds), lease_owner = NULL, "
        "deliveries = deliveries - 1 WHERE task_id = :task_id AND lease_owner = :owner AND deliveries = :deliveries"),
    renew=sa.text(
        "UPDATE task_queue SET available_at = now() + make_interval(secs => :seconds) "
        "WHERE task_id = :task_id AND lease_owner = :owner AND deliveries = :deliveries"),
    ack=ACK,
)
"""PostgreSQL: times on the database's clock (executors on several hosts agree), FOR UPDATE SKIP LOCKED."""

_UNTIL = sa.bindparam("until", type_=UtcDateTime)
QUEUE_SQLITE = QueueStatements(
    claim=sa.text(
        "UPDATE task_queue SET available_at = :until, lease_owner = :owner, deliveries = deliveries + 1 "
        "WHERE task_id = (SELECT task_id FROM task_queue WHERE available_at <= :now ORDER BY available_at LIMIT 1) "
        "RETURNING task_id, body, deliveries").bindparams(_UNTIL, sa.bindparam("now", type_=UtcDateTime)),
    nack=sa.text(
        "UPDATE task_queue SET available_at = :until, lease_owner = NULL "
        "WHERE task_id = :task_id AND lease_owner = :owner AND deliveries = :deliveries").bindparams(_UNTIL),
    release=sa.text(
        "UPDATE task_queue SET available_at = :until, lease_owner = NULL, deliveries = deliveries - 1 "
        "WHERE task_id = :task_id AND lease_owner = :owner AND deliveries = :deliveries").bindparams(_UNTIL),
    renew=sa.text(
        "UPDATE task_queue SET available_at = :until "
        "WHERE task_id = :task_id AND lease_owner = :owner AND deliveries = :deliveries").bindparams(_UNTIL),
    ack=ACK,
)
"""SQLite: times from this host's clock (a single host), passed as :now and :until."""


def queue_statements(connection_or_engine: Any) -> QueueStatements:
    """The queue's statements for the dialect of a connection or engine."""
    return QUEUE_SQLITE if connection_or_engine.dialect.name == "sqlite" else QUEUE_POSTGRESQL


NOTIFY = sa.text("SELECT pg_notify(:channel, '')")
"""PostgreSQL: wake the executors LISTENing on the queue's channel."""

_queue = TASK_QUEUE


def insert_queue_rows(connection: Connection, rows: list[dict[str, Any]]) -> list[str]:
    """Queue rows for task ids not in the queue yet (pages of multi-row INSERT ... ON CONFLICT DO NOTHING);
    returns the new ids."""
    return insert_new(connection, _queue, rows, "task_id")


def remove_unclaimed(connection: Connection, task_ids: list[str]) -> int:
    """The queue rows of these tasks that no executor holds (cancelled tasks); returns how many."""
    removed = 0
    for index in range(0, len(task_ids), 1000):
        chunk = task_ids[index:index + 1000]
        result = connection.execute(sa.delete(_queue).where(_queue.c.task_id.in_(chunk),
                                                            _queue.c.lease_owner.is_(None)))
        removed += max(result.rowcount or 0, 0)
    return removed


def queue_counts(connection: Connection) -> tuple[int, int, datetime | None]:
    """Rows claimable now (the database's clock on PostgreSQL, this host's on SQLite), rows in all, and
    the oldest one's enqueue time (as the database returns it)."""
    sqlite = connection.dialect.name == "sqlite"
    now = sa.literal(datetime.now(timezone.utc), UtcDateTime) if sqlite else sa.func.now()
    waiting = connection.execute(
        sa.select(sa.func.count()).select_from(_queue).where(_queue.c.available_at <= now)).scalar_one()
    total, oldest = connection.execute(sa.select(sa.func.count(), sa.func.min(_queue.c.enqueued_at))
                                       .select_from(_queue)).one()
    return waiting, total, oldest


def queue_size(connection: Connection) -> int:
    """Every row in the queue, claimed ones included."""
    return connection.execute(sa.select(sa.func.count()).select_from(_queue)).scalar_one()
