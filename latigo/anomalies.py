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

from sqlalchemy.engine import Connection

from latigo.storage import reads
from latigo.types import DEFAULT_PROJECT, ModelRef

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


def find_episodes(connection: Connection, since: datetime, models: Sequence[str] = (),
                  projects: Sequence[str] = ()) -> list[Episode]:
    """Episodes of every model (or `models`, by name or `project/name`; of `projects`) whose buckets lie at or
    after `since`, newest first."""
    wanted = {series_id: (project, model) for series_id, project, model in reads.whole_series(connection, TOTAL)
              if not ((models and model not in models and f"{project}/{model}" not in models)
                      or (projects and project not in projects))}
    episodes: list[Episode] = []
    if connection.dialect.name == "postgresql":
        episodes = _episodes_in_database(connection, since, wanted)
    else:
        for series_id, (project, model) in wanted.items():
            episodes.extend(runs_above(model, reads.series_values(connection, series_id, since), project=project))
    for episode in episodes:
        last = episode.end or episode.start + OPEN_ENDED
        episode.top_tags = reads.tag_peaks(connection, ModelRef(episode.project, episode.model), PER_TAG,
                                           episode.start, last, TOP_TAGS)
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
    """reads.edges_above, then the usual step of the few series that have an episode (runs_above's median
    gap)."""
    found = reads.edges_above(connection, TOTAL, since, THRESHOLD)
    rows: list[tuple[Any, ...]] = []
    for series_id, ts, value, gap, previous, newest, next_ts, next_value in found:
        rows.append((series_id, ts, value, gap, previous, newest))
        if next_ts is not None and next_value <= THRESHOLD:  # the bucket that ends the episode
            rows.append((series_id, next_ts, next_value, (next_ts - ts).total_seconds(), value, False))
    ids = sorted({row[0] for row in rows if row[0] in wanted})
    stamps = reads.series_stamps(connection, ids, since) if ids else {}
    steps = {series_id: _usual_step([(ts, 0.0) for ts in points]) for series_id, points in stamps.items()}
    return episodes_from_edges(rows, wanted, steps)


def episodes_from_edges(rows: Sequence[Any], series: dict[int, tuple[str, str]],
                        steps: dict[int, timedelta | None], threshold: float = THRESHOLD) -> list[Episode]:
    """runs_above's episodes from reads.edges_above's rows (series_id, ts, value, gap seconds, previous
    value, newest) and each series' usual step: a row above the threshold continues the episode when the row
    before it was above too and no hole lies between; any other row ends it."""
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
