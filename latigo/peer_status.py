"""Peers the executors see down, in the database: what `latigo status`, the web page and /readyz of other
processes read (a circuit breaker lives in one executor's memory).

Each executor keeps one row per peer whose breaker is open (`peer_status`): written when the breaker opens,
refreshed every `REFRESH` seconds while it stays open, deleted when the peer is back. A row not refreshed
for `STALE` seconds belongs to an executor that stopped meanwhile: readers leave it out, the next
executor to see the peer up or down replaces it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from latigo.errors import one_line
from latigo.peers import PeerRegistry, PeerState
from latigo.storage.tables import PEER_STATUS
from latigo.storage.upsert import dialect_insert

log = logging.getLogger(__name__)

REFRESH = 30.0
"""Seconds between an executor's refreshes of the peers it sees down."""
STALE = timedelta(minutes=5)
"""A row older than this is an executor's that is gone."""


@dataclass(frozen=True)
class PeerDownReport:
    peer: str
    down_since: datetime
    reason: str
    executors: int
    reported_at: datetime


class PeerStatusWriter:
    """An executor's side: records its breakers' transitions and refreshes the open ones."""

    def __init__(self, engine: Engine, executor: str, peers: PeerRegistry) -> None:
        self.engine, self.executor, self.peers = engine, executor[:255], peers
        self._refreshed = 0.0
        peers.listen(self.record)

    def record(self, state: PeerState) -> None:
        with self.engine.begin() as connection:
            if state.down_since is None:
                connection.execute(sa.delete(PEER_STATUS).where(PEER_STATUS.c.peer == state.peer[:255],
                                                                PEER_STATUS.c.executor == self.executor))
            else:
                self._upsert(connection, state)

    def refresh(self, force: bool = False) -> None:
        """Every REFRESH seconds (called from the executor's heartbeat): the open breakers' rows."""
        now = time.monotonic()
        if not force and now - self._refreshed < REFRESH:
            return
        self._refreshed = now
        down = self.peers.down()
        if not down:
            return
        try:
            with self.engine.begin() as connection:
                for state in down:
                    self._upsert(connection, state)
        except Exception as exc:  # the database may be the thing that is down: the next refresh retries
            log.debug("refreshing peer status failed: %s", type(exc).__name__)

    def clear(self) -> None:
        """At shutdown: this executor reports nothing any more."""
        try:
            with self.engine.begin() as connection:
                connection.execute(sa.delete(PEER_STATUS).where(PEER_STATUS.c.executor == self.executor))
        except Exception as exc:
            log.debug("clearing peer status failed: %s", type(exc).__name__)

    def _upsert(self, connection: Connection, state: PeerState) -> None:
        assert state.down_since is not None
        values = {"peer": state.peer[:255], "executor": self.executor, "down_since": state.down_since,
                  "reason": one_line(state.reason), "reported_at": datetime.now(timezone.utc)}
        statement = dialect_insert(connection, PEER_STATUS).values(values)
        connection.execute(statement.on_conflict_do_update(
            index_elements=["peer", "executor"],
            set_={"down_since": statement.excluded.down_since, "reason": statement.excluded.reason,
                  "reported_at": statement.excluded.reported_at}))


def peers_down(connection: Connection, now: datetime | None = None) -> list[PeerDownReport]:
    """The peers some executor sees down now (recently refreshed rows), longest down first."""
    now = now or datetime.now(timezone.utc)
    rows = connection.execute(
        sa.select(PEER_STATUS.c.peer, sa.func.min(PEER_STATUS.c.down_since).label("down_since"),
                  sa.func.max(PEER_STATUS.c.reason).label("reason"), sa.func.count().label("executors"),
                  sa.func.max(PEER_STATUS.c.reported_at).label("reported_at"))
        .where(PEER_STATUS.c.reported_at >= now - STALE)
        .group_by(PEER_STATUS.c.peer).order_by(sa.text("down_since"))).all()
    return [PeerDownReport(r.peer, _utc(r.down_since), r.reason, int(r.executors), _utc(r.reported_at))
            for r in rows]


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
