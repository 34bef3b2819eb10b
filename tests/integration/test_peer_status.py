"""Peers an executor sees down reach `latigo status`, the web page and the executor's /readyz, and leave
them when the peer is back (PostgreSQL and SQLite)."""

from __future__ import annotations

import html
import json
import socket
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from latigo.errors import TransientError
from latigo.http import NO_RETRY, HttpClient
from latigo.peer_status import STALE, PeerStatusWriter, peers_down
from latigo.peers import PeerDown, PeerRegistry
from latigo.status import collect_status
from latigo.storage import migrations
from latigo.storage.tables import PEER_STATUS
from tests.integration.test_web import get, serve

pytestmark = [pytest.mark.integration]

HOSTILE = 'gordo <script>alert("x")</script> at 127.0.0.1'


def free_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def migrated(engine):
    migrations.upgrade(engine)
    return engine


def test_a_refused_peer_opens_its_breaker_is_recorded_shown_and_cleared(migrated, tmp_path):
    peers = PeerRegistry()
    peers.configure(threshold=3, base_delay=1.0, max_delay=30.0)
    PeerStatusWriter(migrated, "exec-1", peers)  # listens to the registry's breakers
    breaker = peers.breaker(HOSTILE)
    http = HttpClient("gordo", timeout=2.0, retry=NO_RETRY, peer=breaker)
    url = f"http://127.0.0.1:{free_port()}/gordo/v0/p/models"
    outcomes = []
    for _ in range(5):
        try:
            http.request("GET", url)
        except PeerDown:
            outcomes.append("down")
        except TransientError:
            outcomes.append("failed")
    assert outcomes == ["failed", "failed", "down", "down", "down"]  # the third failure opens it
    assert http.requests_sent == 3  # refused calls are not made

    report = collect_status(migrated)
    assert [(p.peer, p.executors) for p in report.peers_down] == [(HOSTILE, 1)]
    text = report.to_text()
    assert text.splitlines()[0].startswith(f"PEER DOWN:        {HOSTILE} since ")
    assert "ConnectionError" in text.splitlines()[0]
    assert json.loads(report.to_json())["peers_down"][0]["peer"] == HOSTILE

    server = serve(migrated)
    try:
        status, page, _ = get(server.url)
        assert status == 200
        banner = page[page.index('id="peers-down"'):page.index("</section>", page.index('id="peers-down"'))]
        assert html.escape(HOSTILE) in banner and "<script>" not in page
        assert page.index('id="peers-down"') < page.index('data-metric="backlog"')  # above everything else

    finally:
        server.shutdown()
        server.server_close()
    breaker.succeeded()  # the peer is back
    assert collect_status(migrated).peers_down == []
    server = serve(migrated)  # a new one: the overview is cached for a few seconds
    try:
        status, page, _ = get(server.url)
        assert status == 200 and 'id="peers-down"' not in page
    finally:
        server.shutdown()
        server.server_close()


def test_a_row_no_executor_refreshed_is_stale_and_left_out(migrated):
    old = datetime.now(timezone.utc) - STALE - timedelta(minutes=1)
    with migrated.begin() as connection:
        connection.execute(sa.insert(PEER_STATUS).values(peer="influx db:8086", executor="gone", down_since=old,
                                                         reason="refused", reported_at=old))
        connection.execute(sa.insert(PEER_STATUS).values(
            peer="influx db:8086", executor="alive", down_since=old + timedelta(minutes=2), reason="refused",
            reported_at=datetime.now(timezone.utc)))
    with migrated.connect() as connection:
        down = peers_down(connection)
    assert [(p.peer, p.executors) for p in down] == [("influx db:8086", 1)]
