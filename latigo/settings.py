"""latigo's settings: the typed sections of the configuration, apart from how they are loaded.

The loops and the storage take these; `latigo.config` builds them from defaults, the YAML file and the
LATIGO_* environment, and checks every value. Each field's metadata carries its validation rules (min,
choices); a component's own settings (a queue's, a provider's) live beside its implementation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from latigo.types import DEFAULT_PROJECT

DEFAULT_OUTPUTS = (
    "model-output",
    "total-anomaly-scaled",
    "tag-anomaly-scaled",
    "anomaly-confidence",
    "total-anomaly-confidence",
)


def _spec(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **rules: Any) -> Any:
    """A dataclass field with validation rules (min, choices) kept in its metadata."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=rules)
    return field(default=default, metadata=rules)


@dataclass
class DatabaseSettings:
    url: str = "sqlite:///latigo.db"
    pool_size: int = _spec(10, min=1)
    connect_timeout: timedelta = timedelta(seconds=10)
    synchronous_commit: bool = False
    statistics_interval: timedelta = timedelta(minutes=10)
    """How often the scheduler analyses, on PostgreSQL, the tables that changed by a tenth since their last
    ANALYZE (latigo.storage.statistics): the reads behind status and the web page plan from them."""
    """PostgreSQL: wait for each commit to reach disk. Off by default because nothing latigo commits has
    an effect outside this database that a lost commit could orphan: if the server crashes, the last
    moments of commits roll back together (a task's predictions, its `done` and its queue row's removal
    are one transaction), and the task simply runs again. Saves a disk flush (about 1.3 ms here) per
    transaction."""


@dataclass
class SchedulerSettings:
    start_time: str = "00:00"
    """Anchor of the tick grid: a UTC time of day "HH:MM" or an ISO 8601 instant."""
    interval: timedelta = timedelta(minutes=30)
    delay: timedelta = timedelta(minutes=5)
    """Data latency: a window is scheduled only once its data is this old."""
    run_at_once: bool = False
    catch_up_limit: timedelta = timedelta(hours=24)
    batch_size: int = _spec(1000, min=1)
    check_interval: timedelta = timedelta(seconds=10)
    """How often the loop wakes to look for due windows and model changes."""
    backfill_confirm_above: int = _spec(10_000, min=0)
    """`latigo backfill` asks for --yes before enqueueing more tasks than this."""


@dataclass
class ExecutorSettings:
    concurrency: int = _spec(8, min=1)
    """Model calls at once in one process (the load this executor puts on the model server)."""
    spare_workers: int | None = _spec(None, min=0)
    """Worker threads beyond `concurrency`: while the model calls run, they claim the next tasks and store
    the finished ones, so a model slot never waits on the database. None: a quarter of `concurrency`,
    at least 1; 0: none (each worker claims, runs and stores in turn). A task a spare holds when its
    executor dies counts as a lost run, like any task in flight."""
    max_attempts: int = _spec(5, min=1)
    """Runs in which the model ran and failed in a way worth retrying, before the task fails."""
    retry_base_delay: timedelta = timedelta(seconds=2)
    retry_max_delay: timedelta = timedelta(minutes=5)
    max_lost_runs: int = _spec(10, min=1)
    """Runs that never finished (their executor died) before the task is given up as abandoned."""
    max_deliveries: int = _spec(50, min=1)
    """Deliveries of one message without it being settled before it is dead-lettered (a message that
    cannot even be recorded)."""
    max_window: timedelta = timedelta(days=1)
    """The longest task window taken; longer ones are refused (and scheduler.interval may not exceed it)."""
    shutdown_timeout: timedelta = timedelta(seconds=30)
    poll_timeout: timedelta = timedelta(seconds=2)
    peer_failures: int = _spec(5, min=1)
    """Connection-level failures in a row (no success between) after which a peer counts as down: its
    circuit breaker opens and tasks that need it wait without spending attempts (latigo.peers)."""
    peer_probe_max_delay: timedelta = timedelta(seconds=30)
    """While a peer is down, one request at a time probes it, after a delay doubling from 1 s up to this."""

    @property
    def workers(self) -> int:
        """Worker threads in all: the model slots and the spares around them."""
        spare = self.spare_workers if self.spare_workers is not None else max(1, self.concurrency // 4)
        return self.concurrency + spare


@dataclass
class PredictionSettings:
    outputs: list[str] = _spec(factory=lambda: list(DEFAULT_OUTPUTS))
    """Which of the model's output groups are stored."""
    sinks: list[Any] = _spec(factory=list)
    """Extra destinations besides the database, each {type: ..., options...}; ComponentSettings once loaded."""
    partition_size: timedelta = timedelta(days=1)
    """PostgreSQL: the time span of one partition of prediction_values (retention drops whole ones)."""
    partitions_ahead: timedelta = timedelta(days=3)
    """PostgreSQL: partitions are created this far ahead by the scheduler and `latigo db upgrade`."""


@dataclass
class RetentionSettings:
    """How long finished rows are kept (null: forever); pruned in batches by the scheduler and
    `latigo db prune`."""

    predictions: timedelta | None = timedelta(days=400)
    """Stored predictions: whole partitions older than this are dropped (SQLite: deleted in batches)."""
    tasks: timedelta | None = timedelta(days=30)
    dead_letters: timedelta | None = timedelta(days=30)
    schedule_state: timedelta | None = timedelta(days=30)
    """Per-model schedule state of models no longer scheduled."""
    prune_interval: timedelta = timedelta(hours=1)
    """How often the scheduler prunes."""


@dataclass
class AlertSettings:
    """Anomaly episodes announced to a webhook by the scheduler (latigo.alerts)."""

    webhook_url: str = ""
    """Where episode events are POSTed as JSON; empty: no alerts."""
    check_interval: timedelta = timedelta(minutes=1)
    lookback: timedelta = timedelta(days=1)
    """Episodes that started longer ago than this are not announced any more."""
    timeout: timedelta = timedelta(seconds=10)
    retries: int = _spec(3, min=0)
    resend_after: timedelta = timedelta(minutes=10)
    """A claimed event never marked sent (its process died mid-POST) is tried again after this."""
    min_buckets: int = _spec(3, min=1)
    """An episode is announced once it has this many buckets above the threshold ..."""
    min_peak: float = _spec(2.0, min=1.0)
    """... or once its total-anomaly-confidence reaches this: one bucket at 1.04 pages nobody, one at 5 does."""
    end_after: timedelta = timedelta(minutes=30)
    """An announced episode ends only after this long with no bucket above the threshold; an episode that
    comes back sooner is the same one (no second page for a dip)."""


@dataclass
class LoggingSettings:
    level: str = _spec("INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
    format: str = _spec("text", choices=("text", "json"))


@dataclass
class MetricsSettings:
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = _spec(9100, min=0)


@dataclass
class ComponentSettings:
    """A pluggable part: `type` picks the implementation, the other keys are its typed settings."""

    type: str
    settings: Any
    required: bool = False
    """Prediction sinks only: written before the commit, and the task is retried when it fails."""


@dataclass
class Config:
    database: DatabaseSettings
    task_queue: ComponentSettings
    scheduler: SchedulerSettings
    executor: ExecutorSettings
    sensor_information: ComponentSettings
    sensor_data: ComponentSettings
    model_information: ComponentSettings
    model_execution: ComponentSettings
    predictions: PredictionSettings
    retention: RetentionSettings
    alerts: AlertSettings
    logging: LoggingSettings
    metrics: MetricsSettings
    prediction_metadata: ComponentSettings | None = None
    """Who tells the Metadata API which series belong to which model (latigo.prediction_metadata); None: nobody."""
    sources: dict[str, str] = field(default_factory=dict, repr=False)
    """Dotted key -> where its value came from: "default", "file <path>:<line>" or "env <VAR>"."""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    """The merged plain mapping the settings were built from (for printing)."""

    def sole_project(self) -> str | None:
        """The one project the model provider names (`project: NAME` or a one-item `projects`), `default` for a
        provider without projects, None when it names several or discovers them."""
        settings = self.model_information.settings
        if not hasattr(settings, "project"):
            return DEFAULT_PROJECT
        projects = list(getattr(settings, "projects", None) or [])
        if getattr(settings, "discover", ""):
            return None
        if settings.project and not projects:
            return str(settings.project)
        return str(projects[0]) if len(projects) == 1 else None
