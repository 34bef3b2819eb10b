"""Planner statistics of the tables latigo fills, kept by latigo itself.

PostgreSQL plans every read from statistics that autovacuum keeps — when it runs. It does not after a large
backfill until it catches up, it is off on some servers, and it never analyses a partitioned table's parent
(prediction_values), whose statistics the planner uses for every query over the view. Plans made without
them are the difference between a second and fifteen for the status page. So latigo analyses, itself, each
table that changed by more than a fraction of its size since it was last analysed (PostgreSQL's own
n_mod_since_analyze), and the partitioned parent whenever one of its partitions was, or it never was.
Run by the scheduler every `database.statistics_interval` (a catalog query when nothing changed) and by
`latigo backfill` after it enqueued its tasks; a no-op on SQLite.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from latigo.storage.tables import PARTITION_PREFIX, PREDICTION_VALUES

log = logging.getLogger(__name__)

CHANGED_FRACTION = 0.1
"""Analyse a table once this fraction of its rows changed since its last ANALYZE (autovacuum's default
analyze_scale_factor is 0.1 too)."""
CHANGED_AT_LEAST = 1000
LATIGO_TABLES = ("tasks", "series", "schedule_state", "task_queue", "models", "anomaly_alerts", "dead_letters")

_STALE = sa.text(
    "SELECT s.relname, s.n_mod_since_analyze, c.reltuples, "
    "coalesce(s.last_analyze, s.last_autoanalyze) IS NULL AS never "
    "FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid "
    "WHERE s.schemaname = current_schema() AND (s.relname = ANY(:tables) OR s.relname LIKE :partitions)")
_PARENT_ANALYSED = sa.text(
    "SELECT count(*) FROM pg_statistic WHERE starelid = CAST(:parent AS regclass)")


def stale_tables(engine: Engine) -> list[str]:
    """The tables whose statistics are missing (never analysed, or reset: reltuples -1) or behind their
    changes, partitions included."""
    with engine.connect() as connection:
        rows = connection.execute(_STALE, {"tables": list(LATIGO_TABLES),
                                           "partitions": PARTITION_PREFIX.replace("_", r"\_") + "%"}).all()
    stale = []
    for name, changed, tuples, never in rows:
        if tuples < 0 or (never and changed > 0) or \
                changed >= max(CHANGED_AT_LEAST, CHANGED_FRACTION * max(tuples, 0)):
            stale.append(name)
    return sorted(stale)


PARENT_EVERY = timedelta(hours=1)
"""ANALYZE of the partitioned parent samples (and analyses) every partition: with a year of daily partitions
that is work, so the parent is analysed when it has no statistics, else at most this often (its statistics
describe the whole range, which a day more changes little); a stale partition alone is analysed at once."""


class StatisticsKeeper:
    """The scheduler's chore: analyse what went stale since the last look."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.parent_analysed_at: float | None = None

    def __call__(self) -> str:
        analysed = refresh_statistics(self.engine, parent_due=self.parent_analysed_at is None
                                      or time.monotonic() - self.parent_analysed_at >= PARENT_EVERY.total_seconds())
        if PREDICTION_VALUES in analysed:
            self.parent_analysed_at = time.monotonic()
        return f"analysed {', '.join(analysed)}" if analysed else ""


def refresh_statistics(engine: Engine, parent_due: bool = True) -> list[str]:
    """ANALYZE what is stale; the partitioned parent when it has no statistics, or when a partition went
    stale and `parent_due` (its ANALYZE covers the partitions too). Returns the tables analysed. Each
    ANALYZE runs on its own (autocommit): it takes no lock a writer waits for."""
    if engine.dialect.name != "postgresql":
        return []
    tables = stale_tables(engine)
    with engine.connect() as connection:
        parent_missing = connection.execute(_PARENT_ANALYSED, {"parent": PREDICTION_VALUES}).scalar_one() == 0
    partitions = [name for name in tables if name.startswith(PARTITION_PREFIX)]
    if parent_missing or (partitions and parent_due):
        tables = [name for name in tables if name not in partitions] + [PREDICTION_VALUES]
    for name in tables:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql(f'ANALYZE "{name}"')
    if tables:
        log.debug("analysed %d table(s) for the planner: %s", len(tables), ", ".join(tables))
    return tables
