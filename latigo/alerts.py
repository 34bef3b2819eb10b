"""Anomaly alerts: a JSON POST to `alerts.webhook_url` when an anomaly episode starts and when it ends.

The scheduler looks for episodes every `alerts.check_interval`. Each (episode, event) is claimed in the
`anomaly_alerts` table before it is posted, so two processes never post the same event and a process
never posts it again after success. A failed POST (after the HTTP client's retries) gives the claim back
and the next check tries again; a claim left by a process that died mid-POST is retried after
`alerts.resend_after` — so a receiver may, rarely, see an event twice, and every POST carries an
`Idempotency-Key` header (the episode's key and the event) for it to drop the repeat.

Not every episode pages someone: episodes of a model closer together than `alerts.end_after` are one
(the end's hysteresis: a dip below the threshold does not end it), and one is announced only once it has
`alerts.min_buckets` buckets above the threshold or reaches `alerts.min_peak`; it ends once `end_after`
passed without a bucket above. `latigo anomalies` and the web page still show every episode as found.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from latigo.anomalies import Episode, find_episodes
from latigo.errors import LatigoError, describe_exception
from latigo.http import HttpClient, RetryPolicy
from latigo.settings import AlertSettings
from latigo.storage.db import write_transaction
from latigo.storage.tables import ANOMALY_ALERTS
from latigo.storage.upsert import insert_new

log = logging.getLogger(__name__)
STARTED, ENDED = "started", "ended"
_alerts = ANOMALY_ALERTS


class AnomalyAlerts:
    def __init__(self, settings: AlertSettings, engine: Engine, http: HttpClient | None = None) -> None:
        self.settings, self.engine = settings, engine
        self.http = http or HttpClient("alerts", timeout=settings.timeout.total_seconds(),
                                       retry=RetryPolicy(max_retries=settings.retries))

    def check(self, now: datetime | None = None) -> int:
        """Post the events not posted yet; returns how many were posted."""
        now = now or datetime.now(timezone.utc)
        with self.engine.connect() as connection:
            episodes = find_episodes(connection, now - self.settings.lookback)
        posted = 0
        for episode, ended in worth_announcing(episodes, self.settings, now):  # oldest first
            for event in (STARTED, ENDED) if ended else (STARTED,):
                posted += self._announce(episode, event, now)
        return posted

    def _announce(self, episode: Episode, event: str, now: datetime) -> int:
        if not self._claim(episode, event, now):
            return 0
        payload = {"event": f"anomaly_{event}", **episode.as_dict()}
        try:
            self.http.request("POST", self.settings.webhook_url, json=payload,
                              headers={"Idempotency-Key": f"{episode.key}:{event}"})
        except LatigoError as exc:
            log.warning("alert for %s/%s (%s) not delivered (%s); trying again at the next check", episode.project,
                        episode.model, event, describe_exception(exc))
            self._release(episode, event)
            return 0
        self._mark_sent(episode, event)
        log.info("alert sent: %s/%s anomaly episode from %s %s (peak %.2f)", episode.project, episode.model,
                 episode.start.isoformat(),
                 event, episode.peak)
        return 1

    def _claim(self, episode: Episode, event: str, now: datetime) -> bool:
        """Take the event for this process: a new claim, or one whose process died mid-POST."""
        with write_transaction(self.engine) as connection:
            row = {"key": episode.key, "event": event, "project": episode.project, "model": episode.model,
                   "episode_start": episode.start,
                   "claimed_at": now, "sent_at": None}
            if insert_new(connection, _alerts, [row], "key", conflict=("key", "event")):
                return True
            stale = connection.execute(
                sa.update(_alerts).where(_alerts.c.key == episode.key, _alerts.c.event == event,
                                         _alerts.c.sent_at.is_(None),
                                         _alerts.c.claimed_at < now - self.settings.resend_after)
                .values(claimed_at=now))
            return stale.rowcount > 0

    def _release(self, episode: Episode, event: str) -> None:
        with write_transaction(self.engine) as connection:
            connection.execute(sa.delete(_alerts).where(_alerts.c.key == episode.key, _alerts.c.event == event,
                                                        _alerts.c.sent_at.is_(None)))

    def _mark_sent(self, episode: Episode, event: str) -> None:
        with write_transaction(self.engine) as connection:
            connection.execute(sa.update(_alerts).where(_alerts.c.key == episode.key, _alerts.c.event == event)
                               .values(sent_at=datetime.now(timezone.utc)))


def worth_announcing(episodes: list[Episode], settings: AlertSettings, now: datetime) -> list[tuple[Episode, bool]]:
    """(episode, whether its end is to be announced), oldest first: each model's episodes merged across gaps
    shorter than `end_after`, kept when long or high enough; ended once `end_after` passed after its last
    bucket above the threshold."""
    by_model: dict[tuple[str, str], list[Episode]] = {}
    for episode in sorted(episodes, key=lambda e: e.start):
        by_model.setdefault((episode.project, episode.model), []).append(episode)
    out: list[tuple[Episode, bool]] = []
    for runs in by_model.values():
        merged: list[Episode] = []
        for episode in runs:
            last = merged[-1] if merged else None
            if last is not None and last.end is not None and episode.start - last.end <= settings.end_after:
                merged[-1] = _joined(last, episode)
            else:
                merged.append(episode)
        for episode in merged:
            if episode.buckets >= settings.min_buckets or episode.peak >= settings.min_peak:
                out.append((episode, episode.end is not None and now - episode.end >= settings.end_after))
    return sorted(out, key=lambda item: item[0].start)


def _joined(first: Episode, second: Episode) -> Episode:
    """One episode from two of the same model with a short dip between (the first one's start, so its key)."""
    peak = second if second.peak > first.peak else first
    return replace(first, end=second.end, peak=peak.peak, peak_at=peak.peak_at,
                   buckets=first.buckets + second.buckets, top_tags=peak.top_tags)
