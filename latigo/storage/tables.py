"""The SQLAlchemy schema; alembic's migrations must match it (a test checks with autogenerate)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator):
    """Timestamps that are always tz-aware UTC in Python, on PostgreSQL (timestamptz) and on
    SQLite (stored as naive UTC text, which sorts and compares correctly)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given to a UTC column")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ModelRecord(Base):
    """Models latigo knows of; local models also keep their fitted artifact here."""

    __tablename__ = "models"
    project: Mapped[str] = mapped_column(String(255), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    revision: Mapped[str] = mapped_column(String(64), default="")
    tags: Mapped[list] = mapped_column(JSON, default=list)
    target_tags: Mapped[list] = mapped_column(JSON, default=list)
    resolution_seconds: Mapped[int] = mapped_column(Integer, default=600)
    model_offset: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(32), default="registered")
    status_reason: Mapped[str] = mapped_column(Text, default="")
    spec: Mapped[dict] = mapped_column(JSON, default=dict)
    artifact: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    last_seen: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class ScheduleState(Base):
    """Per (project, model), the end of the last window enqueued: restarts resume from here."""

    __tablename__ = "schedule_state"
    project: Mapped[str] = mapped_column(String(255), primary_key=True)
    model: Mapped[str] = mapped_column(String(255), primary_key=True)
    last_window_end: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class TaskRecord(Base):
    """The ledger: one row per task id with its state, how its runs ended and the last error.

    `attempts` counts runs in which the model ran and failed in a way worth retrying (what
    executor.max_attempts caps); `lost` counts runs that never finished (the executor died); `runs`
    counts every start. A release on shutdown or an infrastructure fault counts in neither. `revision` is
    the model server's revision that produced the task's rows (set when it is done)."""

    __tablename__ = "tasks"
    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(String(255))
    window_start: Mapped[datetime] = mapped_column(UtcDateTime)
    window_end: Mapped[datetime] = mapped_column(UtcDateTime)
    state: Mapped[str] = mapped_column(String(16))  # queued | running | done | failed | cancelled
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    runs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lost: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    executor: Mapped[str | None] = mapped_column(String(255), nullable=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    revision: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (
        Index(None, "state", "finished_at"),
        Index(None, "project", "model", "window_end"),
    )


class Series(Base):
    """One predicted series: (project, model, output group, tag) ↔ a small integer, so each stored value
    carries 4 bytes of key instead of four strings."""

    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project: Mapped[str] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(String(255))
    output: Mapped[str] = mapped_column(String(64))
    tag: Mapped[str] = mapped_column(String(255))

    __table_args__ = (Index(None, "project", "model", "output", "tag", unique=True),)


PREDICTION_VALUES = "prediction_values"
PARTITION_PREFIX = f"{PREDICTION_VALUES}_p"
"""Partitions of prediction_values on PostgreSQL are named prediction_values_p<start>; they are managed by
latigo.storage.partitions, not by the migrations."""


class PredictionValue(Base):
    """Stored predictions keyed by (series, ts): a rewritten task overwrites, never duplicates. On
    PostgreSQL range-partitioned by ts (retention drops whole partitions); on SQLite one table."""

    __tablename__ = PREDICTION_VALUES
    series_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)
    value: Mapped[float] = mapped_column(Double)

    __table_args__ = ({"postgresql_partition_by": "RANGE (ts)", "sqlite_with_rowid": False},)


def is_managed_elsewhere(name: str | None) -> bool:
    """Tables the migrations do not describe: prediction_values' partitions."""
    return bool(name) and str(name).startswith(PARTITION_PREFIX)


class AnomalyAlert(Base):
    """Anomaly episode events announced to the webhook (latigo.alerts): claimed before the POST, marked sent
    after it."""

    __tablename__ = "anomaly_alerts"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    event: Mapped[str] = mapped_column(String(16), primary_key=True)  # started | ended
    project: Mapped[str] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(String(255))
    episode_start: Mapped[datetime] = mapped_column(UtcDateTime)
    claimed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class PredictionMetadataRecord(Base):
    """What the Metadata API was told about a model's series (latigo.prediction_metadata): one row per
    (project, model, revision), so the POST is made once, and again when the revision or the series change."""

    __tablename__ = "prediction_metadata"
    project: Mapped[str] = mapped_column(String(255), primary_key=True)
    model: Mapped[str] = mapped_column(String(255), primary_key=True)
    revision: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    """sha256 of the input and output series sent; a change means the API is told again."""
    model_id: Mapped[str] = mapped_column(String(255))
    """The Metadata API's id for this model (its answer's `model_id`)."""
    sent_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ViewBase(DeclarativeBase):
    """Read-only mappings of views (their own metadata: the migrations create the views by SQL)."""

    metadata = MetaData()


class Prediction(ViewBase):
    """The `predictions` view (project, model, output, tag, ts, value): every stored value with its series'
    names, so queries, `latigo status` and Grafana read predictions as they always did."""

    __tablename__ = "predictions"
    project: Mapped[str] = mapped_column(String(255), primary_key=True)
    model: Mapped[str] = mapped_column(String(255), primary_key=True)
    output: Mapped[str] = mapped_column(String(64), primary_key=True)
    tag: Mapped[str] = mapped_column(String(255), primary_key=True)
    ts: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)
    value: Mapped[float] = mapped_column(Double)


PREDICTIONS_VIEW_SQL = (
    "CREATE VIEW predictions AS SELECT s.project, s.model, s.output, s.tag, v.ts, v.value "
    "FROM prediction_values v JOIN series s ON s.id = v.series_id"
)


class QueuedTask(Base):
    """The database task queue. `available_at` doubles as the lease expiry: a claim moves it
    into the future, so a task whose executor died becomes visible again by itself."""

    __tablename__ = "task_queue"
    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    available_at: Mapped[datetime] = mapped_column(UtcDateTime)
    enqueued_at: Mapped[datetime] = mapped_column(UtcDateTime)
    deliveries: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(255), nullable=True)

    __table_args__ = (Index(None, "available_at"),)


class EventHubOwnership(Base):
    __tablename__ = "eventhub_ownership"
    fully_qualified_namespace: Mapped[str] = mapped_column(String(255), primary_key=True)
    eventhub_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    consumer_group: Mapped[str] = mapped_column(String(255), primary_key=True)
    partition_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(255), default="")
    last_modified_time: Mapped[float] = mapped_column(Double)
    etag: Mapped[str] = mapped_column(String(64))


class EventHubCheckpoint(Base):
    __tablename__ = "eventhub_checkpoints"
    fully_qualified_namespace: Mapped[str] = mapped_column(String(255), primary_key=True)
    eventhub_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    consumer_group: Mapped[str] = mapped_column(String(255), primary_key=True)
    partition_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    offset: Mapped[str] = mapped_column(String(64))
    sequence_number: Mapped[int] = mapped_column(BigInteger)


class DeadLetter(Base):
    """Messages that could not be decoded or recorded, kept once per (source, message id) with their raw
    body for a human to look at; `project` and `model` when the body named them."""

    __tablename__ = "dead_letters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(255))
    project: Mapped[str | None] = mapped_column(String(255), nullable=True)
    model: Mapped[str | None] = mapped_column(String(255), nullable=True)
    message_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    error: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (Index(None, "source", "message_id", unique=True),)


class PeerStatus(Base):
    """A peer an executor sees down (its circuit breaker open): written when it opens, refreshed while
    it stays open, deleted when the peer is back (latigo.peer_status)."""

    __tablename__ = "peer_status"
    peer: Mapped[str] = mapped_column(String(255), primary_key=True)
    executor: Mapped[str] = mapped_column(String(255), primary_key=True)
    down_since: Mapped[datetime] = mapped_column(UtcDateTime)
    reason: Mapped[str] = mapped_column(Text)
    reported_at: Mapped[datetime] = mapped_column(UtcDateTime)



class ModelSummary(Base):
    """Per model, what the overview shows of it: its newest window, its newest outcome (done or failed)
    and that window's end, its last done window, its latest total-anomaly-confidence. Kept by triggers on
    `tasks` (alembic 0008), never written by latigo's code: one scan of it replaces four index probes per
    model on every refresh."""

    __tablename__ = "model_summary"
    project: Mapped[str] = mapped_column(String(255), primary_key=True)
    model: Mapped[str] = mapped_column(String(255), primary_key=True)
    newest_window_end: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    outcome_window_end: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    last_done_end: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    confidence: Mapped[float | None] = mapped_column(Double, nullable=True)
    confidence_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class TaskHour(Base):
    """Tasks finished in one settled hour, counted once by the scheduler (latigo.storage.task_hours) so
    the overview's 24-hour chart does not count them from the ledger on every first view."""

    __tablename__ = "task_hours"
    hour: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)
    done: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)

def _table(model: type[Base]) -> Table:
    """A mapped class's Table, typed as one (the ORM declares `__table__` as a plain FromClause)."""
    return cast(Table, model.__table__)


MODELS = _table(ModelRecord)
SCHEDULE_STATE = _table(ScheduleState)
TASKS = _table(TaskRecord)
SERIES = _table(Series)
PREDICTION_VALUES_TABLE = _table(PredictionValue)
TASK_QUEUE = _table(QueuedTask)
EVENTHUB_OWNERSHIP = _table(EventHubOwnership)
EVENTHUB_CHECKPOINTS = _table(EventHubCheckpoint)
DEAD_LETTERS = _table(DeadLetter)
MODEL_SUMMARY = _table(ModelSummary)
TASK_HOURS = _table(TaskHour)
ANOMALY_ALERTS = _table(AnomalyAlert)
PEER_STATUS = _table(PeerStatus)
