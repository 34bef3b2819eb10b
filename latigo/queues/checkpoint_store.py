"""Event Hub partition ownership and checkpoints in latigo's own database (no Blob storage needed).

The SDK's load balancer relies on this store for correctness, so it follows the contract to the letter:
- claims are optimistic: an ownership with an etag is renewed/stolen with `UPDATE ... WHERE etag = :old`
  and a fresh etag; one without an etag is a first claim, an INSERT where a key conflict means the claim
  was lost (two processors can never both win a partition's first claim);
- `last_modified_time` is epoch seconds from the database's clock, so processors on machines with skewed
  clocks still agree on when an ownership expires;
- every method is one short transaction: a slow store makes the balancer churn ownership.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from azure.eventhub import CheckpointStore
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from latigo.storage.db import write_transaction
from latigo.storage.tables import EVENTHUB_CHECKPOINTS, EVENTHUB_OWNERSHIP

OWNERSHIP = EVENTHUB_OWNERSHIP
CHECKPOINTS = EVENTHUB_CHECKPOINTS
_SCOPE = ("fully_qualified_namespace", "eventhub_name", "consumer_group")
_KEY = (*_SCOPE, "partition_id")
OWNERSHIP_CALL_TIMEOUT = 10.0
"""Seconds a list/claim of ownership may take on PostgreSQL."""


def database_epoch_now(engine: Engine) -> sa.ColumnElement[float]:
    """The database server's current time as epoch seconds (float): on PostgreSQL the statement's time
    (clock_timestamp, not now(), which is frozen at the start of the transaction)."""
    if engine.dialect.name == "sqlite":
        return sa.literal_column("((julianday('now') - 2440587.5) * 86400.0)", sa.Float)
    return sa.cast(sa.func.extract("epoch", sa.func.clock_timestamp()), sa.Float)


class SqlCheckpointStore(CheckpointStore):
    """azure.eventhub CheckpointStore on the `eventhub_ownership` / `eventhub_checkpoints` tables."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._now = database_epoch_now(engine)
        dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
        self._insert = dialect.insert
        # Checkpoints are the hot path (one per acknowledged task): plain SQL that PostgreSQL and SQLite
        # share, so no statement is compiled per call.
        self._upsert_checkpoint = sa.text(
            f"INSERT INTO {CHECKPOINTS.name} ({', '.join(_KEY)}, \"offset\", sequence_number) "
            f"VALUES ({', '.join(':' + k for k in _KEY)}, :offset, :sequence_number) "
            f"ON CONFLICT ({', '.join(_KEY)}) DO UPDATE "
            'SET "offset" = excluded."offset", sequence_number = excluded.sequence_number'
        )

    # ---------------------------------------------------------------- ownership

    def list_ownership(
        self, fully_qualified_namespace: str, eventhub_name: str, consumer_group: str, **kwargs: Any
    ) -> Iterable[dict[str, Any]]:
        query = sa.select(OWNERSHIP).where(*self._scope(fully_qualified_namespace, eventhub_name, consumer_group))
        with self.engine.connect() as connection:
            self._bound(connection)
            return [self._ownership_dict(row) for row in connection.execute(query).mappings()]

    def claim_ownership(self, ownership_list: Iterable[dict[str, Any]], **kwargs: Any) -> Iterable[dict[str, Any]]:
        """The claims that were won, each with its new etag and last_modified_time."""
        won = []
        with write_transaction(self.engine) as connection:
            self._bound(connection)
            for ownership in ownership_list:
                row = self._claim_one(connection, ownership)
                if row is not None:
                    won.append({**ownership, **self._ownership_dict(row)})
        return won

    def _claim_one(self, connection: Connection, ownership: dict[str, Any]) -> Any:
        key = {name: str(ownership[name]) for name in _KEY}
        values = {"owner_id": ownership.get("owner_id") or "", "etag": uuid.uuid4().hex}
        old_etag = ownership.get("etag")
        if old_etag:
            statement = (
                OWNERSHIP.update()
                .where(*(OWNERSHIP.c[name] == value for name, value in key.items()), OWNERSHIP.c.etag == old_etag)
                .values(**values, last_modified_time=self._now)
            )
        else:
            statement = (
                self._insert(OWNERSHIP)
                .values(**key, **values, last_modified_time=self._now)
                .on_conflict_do_nothing(index_elements=list(_KEY))
            )
        return connection.execute(statement.returning(*OWNERSHIP.c)).mappings().first()

    # ---------------------------------------------------------------- checkpoints

    def update_checkpoint(self, checkpoint: dict[str, Any], **kwargs: Any) -> None:
        with write_transaction(self.engine) as connection:
            self.write_checkpoint(connection, checkpoint)

    def write_checkpoint(self, connection: Connection, checkpoint: dict[str, Any]) -> None:
        """Upsert one checkpoint inside the caller's transaction."""
        values: dict[str, str | int] = {name: str(checkpoint[name]) for name in _KEY}
        values["offset"] = str(checkpoint["offset"])
        values["sequence_number"] = int(checkpoint["sequence_number"])
        connection.execute(self._upsert_checkpoint, values)

    def list_checkpoints(
        self, fully_qualified_namespace: str, eventhub_name: str, consumer_group: str, **kwargs: Any
    ) -> Iterable[dict[str, Any]]:
        query = sa.select(CHECKPOINTS).where(
            *self._scope(fully_qualified_namespace, eventhub_name, consumer_group, CHECKPOINTS)
        )
        with self.engine.connect() as connection:
            return [
                {name: row[name] for name in (*_KEY, "offset", "sequence_number")}
                for row in connection.execute(query).mappings()
            ]

    # ---------------------------------------------------------------- helpers

    def _bound(self, connection: Connection) -> None:
        """On PostgreSQL, fail an ownership call stuck behind a lock rather than let the balancer's
        ownerships expire meanwhile (the SDK retries the next round)."""
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SET LOCAL statement_timeout = {int(OWNERSHIP_CALL_TIMEOUT * 1000)}")

    @staticmethod
    def _scope(namespace: str, hub: str, group: str, table: sa.Table = OWNERSHIP) -> list[sa.ColumnElement[bool]]:
        return [table.c[name] == value for name, value in zip(_SCOPE, (namespace, hub, group), strict=True)]

    @staticmethod
    def _ownership_dict(row: Any) -> dict[str, Any]:
        return {
            **{name: row[name] for name in _KEY},
            "owner_id": row["owner_id"],
            "last_modified_time": float(row["last_modified_time"]),
            "etag": row["etag"],
        }
