"""Anomaly episodes: contiguous runs of a model's total-anomaly-confidence above 1 (Gordo's threshold),
read from the stored predictions.

An episode is a maximal run of consecutive predicted buckets whose total-anomaly-confidence exceeds 1;
a bucket at or below 1, or a hole in the predictions longer than twice the model's usual step, ends it.
An episode still above the threshold at the newest prediction is open (no end yet). The tags that
contribute most are those with the highest anomaly-confidence during the episode.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Sequence
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
WITH totals AS (SELECT id FROM series WHERE output = :output AND tag = :output),
v AS (
    SELECT p.series_id, p.ts, p.value, p.ts - lag(p.ts) OVER w AS gap, lag(p.value) OVER w AS previous,
           lead(p.ts) OVER w IS NULL AS newest
    FROM prediction_values p WHERE p.series_id IN (SELECT id FROM totals) AND p.ts >= :since
    WINDOW w AS (PARTITION BY p.series_id ORDER BY p.ts)),
steps AS (
    SELECT series_id, percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM gap)) AS step
    FROM v WHERE gap IS NOT NULL GROUP BY series_id)
SELECT v.series_id, v.ts, v.value, extract(epoch FROM v.gap) AS gap, v.previous, v.newest, steps.step
FROM v LEFT JOIN steps ON steps.series_id = v.series_id
WHERE v.value > :threshold OR v.previous > :threshold
ORDER BY v.series_id, v.ts
""")
"""PostgreSQL: only the rows an episode is made of, and the row after each (which ends it), with the gap to
the row before and the series' usual step: a day at 9,000 models is 1.3 M buckets, of which Python sees the
few around an episode."""


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
        edges = _EDGES.bindparams(sa.bindparam("since", type_=UtcDateTime)).columns(ts=UtcDateTime())
        rows = connection.execute(edges, {"output": TOTAL, "since": since, "threshold": THRESHOLD}).all()
        episodes = [e for e in episodes_from_edges(rows, wanted)]
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


def episodes_from_edges(rows: Sequence[Any], series: dict[int, tuple[str, str]],
                        threshold: float = THRESHOLD) -> list[Episode]:
    """runs_above's episodes from _EDGES' rows (series_id, ts, value, gap seconds, previous value, newest,
    step seconds): a row above the threshold continues the episode when the row before it was above too
    and no hole lies between; any other row ends it."""
    episodes: list[Episode] = []
    current: list[tuple[datetime, float]] = []
    current_series: int | None = None
    last_newest = False

    def close(open_: bool) -> None:
        if current and current_series in series:
            project, model = series[current_series]
            episodes.append(_episode(project, model, list(current), closed=not open_))
        current.clear()

    for series_id, ts, value, gap, previous, newest, step in rows:
        if series_id != current_series:
            close(last_newest)
            current_series = series_id
        broken = gap is not None and step is not None and gap > 2 * step
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
