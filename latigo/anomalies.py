"""Anomaly episodes: contiguous runs of a model's total-anomaly-confidence above 1 (Gordo's threshold),
read from the stored predictions.

An episode is a maximal run of consecutive predicted buckets whose total-anomaly-confidence exceeds 1;
a bucket at or below 1, or a hole in the predictions longer than twice the model's usual step, ends it.
An episode still above the threshold at the newest prediction is open (no end yet). The tags that
contribute most are those with the highest anomaly-confidence during the episode.
"""

from __future__ import annotations

import contextlib
import hashlib
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from latigo.types import DEFAULT_PROJECT

THRESHOLD = 1.0
TOTAL = "total-anomaly-confidence"
PER_TAG = "anomaly-confidence"
TOP_TAGS = 3
OPEN_ENDED = timedelta(days=3650)
"""An open episode's tags are looked at from its start to the newest prediction."""


@dataclass
class Episode:
    model: str
    start: datetime
    """The first bucket above the threshold."""
    end: datetime | None
    """The last bucket above the threshold, or None while the episode goes on."""
    peak: float
    peak_at: datetime
    buckets: int
    top_tags: list[tuple[str, float]] = field(default_factory=list)
    """(tag, its highest anomaly-confidence in the episode), highest first."""
    project: str = DEFAULT_PROJECT

    @property
    def key(self) -> str:
        """Stable across runs: the model (project and name) and where the episode starts."""
        return hashlib.sha256(f"{self.project}\x00{self.model}\x00{self.start.isoformat()}".encode()).hexdigest()[:32]

    def as_dict(self) -> dict:
        data = asdict(self)
        data.update(start=self.start.isoformat(), end=self.end.isoformat() if self.end else None,
                    peak_at=self.peak_at.isoformat(), top_tags=[{"tag": t, "peak": v} for t, v in self.top_tags],
                    key=self.key)
        return data


_SERIES = sa.text("SELECT id, project, model FROM series WHERE output = :output AND tag = :output")
_VALUES = sa.text("SELECT ts, value FROM prediction_values WHERE series_id = :series AND ts >= :since ORDER BY ts")
_TAG_PEAKS = sa.text(
    "SELECT s.tag, max(v.value) FROM series s JOIN prediction_values v ON v.series_id = s.id "
    "WHERE s.project = :project AND s.model = :model AND s.output = :output AND v.ts >= :start AND v.ts <= :end "
    "GROUP BY s.tag ORDER BY max(v.value) DESC LIMIT :limit")


_EDGES = sa.text("""
WITH above AS (
    SELECT p.series_id, p.ts, p.value FROM prediction_values p
    WHERE p.series_id IN (SELECT id FROM series WHERE output = :output AND tag = :output) AND p.ts >= :since
    AND p.value > :threshold)
SELECT a.series_id, a.ts, a.value, extract(epoch FROM a.ts - b.ts) AS gap, b.value AS previous,
       n.ts IS NULL AS newest, n.ts AS next_ts, n.value AS next_value
FROM above a
LEFT JOIN LATERAL (SELECT q.ts, q.value FROM prediction_values q WHERE q.series_id = a.series_id
                   AND q.ts < a.ts AND q.ts >= :since ORDER BY q.ts DESC LIMIT 1) AS b ON true
LEFT JOIN LATERAL (SELECT q.ts, q.value FROM prediction_values q WHERE q.series_id = a.series_id
                   AND q.ts > a.ts ORDER BY q.ts LIMIT 1) AS n ON true
ORDER BY a.series_id, a.ts
""")
"""PostgreSQL: the buckets above the threshold (one filtered scan of the totals) and, by two probes of the
key each, the bucket before and after: a day at 9,000 models is 1.3 M buckets, of which Python sees the
few around an episode."""
_STAMPS = sa.text("SELECT series_id, ts FROM prediction_values WHERE series_id IN :ids AND ts >= :since "
                  "ORDER BY series_id, ts")
_ROOMY = ("SET LOCAL work_mem = '64MB'", "SET LOCAL jit = off")
"""One sort of a day's totals in memory, not on disk; no JIT compiling for a statement that runs once."""


def find_episodes(connection: Connection, since: datetime, models: Sequence[str] = (),
                  projects: Sequence[str] = ()) -> list[Episode]:
    """Episodes of every model (or `models`, by name or `project/name`; of `projects`) whose buckets lie at or
    after `since`, newest first."""
    from latigo.storage.tables import UtcDateTime

    wanted = {series_id: (project, model) for series_id, project, model in
              connection.execute(_SERIES, {"output": TOTAL}).all()
              if not ((models and model not in models and f"{project}/{model}" not in models)
                      or (projects and project not in projects))}
    episodes: list[Episode] = []
    if connection.dialect.name == "postgresql":
        episodes = _episodes_in_database(connection, since, wanted)
    else:
        values = _VALUES.bindparams(sa.bindparam("since", type_=UtcDateTime)).columns(
            ts=UtcDateTime(), value=sa.Double())
        for series_id, (project, model) in wanted.items():
            rows = connection.execute(values, {"series": series_id, "since": since}).all()
            episodes.extend(runs_above(model, [(ts, value) for ts, value in rows], project=project))
    peaks = _TAG_PEAKS.bindparams(sa.bindparam("start", type_=UtcDateTime), sa.bindparam("end", type_=UtcDateTime))
    for episode in episodes:
        last = episode.end or episode.start + OPEN_ENDED
        episode.top_tags = [(tag, float(value)) for tag, value in connection.execute(
            peaks, {"project": episode.project, "model": episode.model, "output": PER_TAG, "start": episode.start,
                    "end": last,
                    "limit": TOP_TAGS}).all()]
    return sorted(episodes, key=lambda e: e.start, reverse=True)


def runs_above(model: str, rows: list[tuple[datetime, float]], threshold: float = THRESHOLD,
               project: str = DEFAULT_PROJECT) -> list[Episode]:
    """The episodes in one model's (ts, total-anomaly-confidence) rows, oldest first (pure)."""
    if not rows:
        return []
    step = _usual_step(rows)
    episodes: list[Episode] = []
    current: list[tuple[datetime, float]] = []
    previous: datetime | None = None
    for ts, value in rows:
        broken = previous is not None and step is not None and ts - previous > 2 * step
        if current and (value <= threshold or broken):
            episodes.append(_episode(project, model, current, closed=True))
            current = []
        if value > threshold:
            current.append((ts, value))
        previous = ts
    if current:
        episodes.append(_episode(project, model, current, closed=False))
    return episodes


def _episodes_in_database(connection: Connection, since: datetime, wanted: dict[int, tuple[str, str]]) -> list[Episode]:
    """_EDGES, then the usual step of the few series that have an episode (runs_above's median gap)."""
    from latigo.storage.tables import UtcDateTime

    with _transaction(connection):
        for setting in _ROOMY:
            connection.exec_driver_sql(setting)
        edges = _EDGES.bindparams(sa.bindparam("since", type_=UtcDateTime)).columns(
            ts=UtcDateTime(), next_ts=UtcDateTime())
        found = connection.execute(edges, {"output": TOTAL, "since": since, "threshold": THRESHOLD}).all()
    rows: list[tuple[Any, ...]] = []
    for series_id, ts, value, gap, previous, newest, next_ts, next_value in found:
        rows.append((series_id, ts, value, gap, previous, newest))
        if next_ts is not None and next_value <= THRESHOLD:  # the bucket that ends the episode
            rows.append((series_id, next_ts, next_value, (next_ts - ts).total_seconds(), value, False))
    ids = sorted({row[0] for row in rows if row[0] in wanted})
    stamps: dict[int, list[tuple[datetime, float]]] = {}
    if ids:
        statement = _STAMPS.bindparams(sa.bindparam("ids", expanding=True), sa.bindparam("since", type_=UtcDateTime))
        for series_id, ts in connection.execute(statement, {"ids": ids, "since": since}):
            stamps.setdefault(series_id, []).append((ts, 0.0))
    steps = {series_id: _usual_step(points) for series_id, points in stamps.items()}
    return episodes_from_edges(rows, wanted, steps)


@contextlib.contextmanager
def _transaction(connection: Connection) -> Iterator[None]:
    """The caller's transaction when one is open (SET LOCAL lasts until it ends), else one of our own."""
    if connection.in_transaction():
        yield
    else:
        with connection.begin():
            yield


def episodes_from_edges(rows: Sequence[Any], series: dict[int, tuple[str, str]],
                        steps: dict[int, timedelta | None], threshold: float = THRESHOLD) -> list[Episode]:
    """runs_above's episodes from _EDGES' rows (series_id, ts, value, gap seconds, previous value, newest)
    and each series' usual step: a row above the threshold continues the episode when the row before it was
    above too and no hole lies between; any other row ends it."""
    episodes: list[Episode] = []
    current: list[tuple[datetime, float]] = []
    current_series: int | None = None
    last_newest = False

    def close(open_: bool) -> None:
        if current and current_series in series:
            project, model = series[current_series]
            episodes.append(_episode(project, model, list(current), closed=not open_))
        current.clear()

    for series_id, ts, value, gap, previous, newest in rows:
        if series_id != current_series:
            close(last_newest)
            current_series = series_id
        step = steps.get(series_id)
        broken = gap is not None and step is not None and gap > 2 * step.total_seconds()
        continues = previous is not None and previous > threshold and not broken
        if current and (value <= threshold or not continues):
            close(False)
        if value > threshold:
            current.append((ts, float(value)))
        last_newest = bool(newest)
    close(last_newest)
    return episodes


def _usual_step(rows: list[tuple[datetime, float]]) -> timedelta | None:
    gaps = [(b[0] - a[0]).total_seconds() for a, b in zip(rows, rows[1:], strict=False)]
    return timedelta(seconds=statistics.median(gaps)) if gaps else None


def _episode(project: str, model: str, run: list[tuple[datetime, float]], closed: bool) -> Episode:
    peak_at, peak = max(run, key=lambda item: item[1])
    return Episode(model, run[0][0], run[-1][0] if closed else None, float(peak), peak_at, len(run),
                   project=project)
