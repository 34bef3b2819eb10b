"""Anomaly alerts: a JSON POST to `alerts.webhook_url` when an anomaly episode starts and when it ends.

The scheduler looks for episodes every `alerts.check_interval`. Each (episode, event) is claimed in the
`anomaly_alerts` table before it is posted, so two processes never post the same event and a process
never posts it again after success. A failed POST (after the HTTP client's retries) gives the claim back
and the next check tries again; a claim left by a process that died mid-POST is retried after
`alerts.resend_after` — so a receiver may, rarely, see an event twice, and every POST carries an
`Idempotency-Key` header (the episode's key and the event) for it to drop the repeat.
"""

from __future__ import annotations

import logging
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
        for episode in reversed(episodes):  # oldest first
            for event in (STARTED, ENDED) if episode.end else (STARTED,):
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
