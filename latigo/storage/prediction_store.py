"""The prediction store: where a task's rows go, kept apart from the ledger's state machine.

It owns the rows (series + prediction_values, latigo.storage.predictions), the time partitions they land in
(latigo.storage.partitions) and dropping them past retention. The ledger (latigo.lifecycle) asks it to write a
task's rows with the task's `done` mark as a follow-up, so both still commit in one transaction (one statement
on PostgreSQL); the store knows no task state.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from latigo.storage.db import write_transaction
from latigo.storage.partitions import Partitions
from latigo.storage.predictions import FollowUp, MissingPartition, write_predictions
from latigo.storage.tables import UtcDateTime
from latigo.types import PredictionFrame

_PRUNE_VALUES_SQLITE = sa.text(
    "DELETE FROM prediction_values WHERE (series_id, ts) IN "
    "(SELECT series_id, ts FROM prediction_values WHERE ts < :cutoff LIMIT :limit)"
).bindparams(sa.bindparam("cutoff", type_=UtcDateTime))


class PredictionStore:
    """The predictions of one database and their partitions."""

    def __init__(self, engine: Engine, partition_size: timedelta = timedelta(days=1)) -> None:
        self.engine = engine
        self.partitions = Partitions(engine, partition_size)

    def ready_for(self, frame: PredictionFrame) -> None:
        """Before the writing transaction: the partitions the frame's rows go to exist (on PostgreSQL;
        created in their own short transaction, never inside a task's)."""
        if frame.rows:
            stamps = [row.ts for row in frame.rows]
            self.partitions.ensure(min(stamps), max(stamps) + timedelta(microseconds=1))

    def ensure_ahead(self, now: datetime, behind: timedelta, ahead: timedelta) -> int:
        """Partitions from `behind` before `now` to `ahead` after it; returns how many were created."""
        return self.partitions.ensure_ahead(now, behind=behind, ahead=ahead)

    def write(self, connection: Connection, frame: PredictionFrame,
              then: Callable[[int], FollowUp] | None = None) -> int:
        """The frame's rows in the caller's transaction, then `then(row count)` (see write_predictions);
        returns the rows. A partition dropped meanwhile by retention elsewhere is forgotten, so the next
        attempt creates it."""
        try:
            return write_predictions(connection, frame, then=then)
        except MissingPartition:
            self.partitions.forget()
            raise

    def prune(self, cutoff: datetime, batch_size: int = 5000) -> int:
        """Predictions before `cutoff`. PostgreSQL: drop the partitions that end before it (no DELETE, no
        bloat); returns how many partitions. SQLite: delete the rows in batches; returns how many rows."""
        if self.partitions.enabled:
            return len(self.partitions.drop_before(cutoff))
        total = 0
        while True:
            with write_transaction(self.engine) as connection:
                result = connection.execute(_PRUNE_VALUES_SQLITE, {"cutoff": cutoff, "limit": batch_size})
            count = max(result.rowcount or 0, 0)
            total += count
            if count < batch_size:
                return total
