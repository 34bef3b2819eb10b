"""An operator's view of a peer that is down, from the processes as they run: `latigo executor` with its
Gordo server unreachable (a TCP proxy refusing) names it in /readyz, in /metrics and, through the database,
in `latigo status`; once the server is back all of them clear and the waiting windows are done."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from latigo.settings import DatabaseSettings
from latigo.storage.db import create_engine_for
from tests.integration.test_monitoring import _Output, metrics_port
from tests.support.gordo_server import GordoServer, ModelSpec, utc
from tests.support.processes import latigo, latigo_ok, write_config
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration]

START = utc("2026-02-01T00:00:00")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def count(url: str, where: str = "true") -> int:
    engine = create_engine_for(DatabaseSettings(url=url))
    try:
        with engine.connect() as connection:
            return connection.execute(sa.text(f"SELECT count(*) FROM tasks WHERE {where}")).scalar_one()
    finally:
        engine.dispose()


def done(url: str) -> int:
    return count(url, "state = 'done'")


def test_readyz_metrics_and_status_name_the_peer_while_it_is_down(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'latigo.db'}"
    with GordoServer(models=[ModelSpec("model-a"), ModelSpec("model-b")]) as gordo, \
            TcpProxy("127.0.0.1", int(gordo.url.rsplit(":", 1)[1])) as proxy:
        section = {"type": "gordo", "base_url": proxy.url, "project": gordo.project}
        config = write_config(
            tmp_path / "latigo.yaml", database={"url": url},
            task_queue={"type": "database", "poll_interval": "200ms"},
            sensor_data={"type": "tests.support.gordo_server:RampSensors"},
            model_information=section, model_execution=section,
            executor={"peer_failures": 3, "peer_probe_max_delay": "2s", "poll_timeout": "500ms"},
            metrics={"enabled": True, "host": "127.0.0.1", "port": 0},
        )
        latigo_ok(config, "db", "upgrade")
        latigo_ok(config, "backfill", "--from", START.isoformat(), "--to", (START + timedelta(hours=2)).isoformat(),
                  "--no-progress")
        proxy.set_mode("refuse")
        executor = latigo(config, "executor")
        output = _Output(executor)
        output.start()
        try:
            port = metrics_port(output, executor, "executor")
            peer = f"gordo {gordo.project} at 127.0.0.1:{proxy.port}"
            assert wait_for(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 503, timeout=60), output.text()
            status, body = get(f"http://127.0.0.1:{port}/readyz")
            assert f"peer {peer} down since" in body, body
            metrics = get(f"http://127.0.0.1:{port}/metrics")[1]
            assert f'latigo_peer_up{{peer="{peer}"}} 0.0' in metrics
            report = json.loads(latigo_ok(config, "status", "--json"))
            assert [p["peer"] for p in report["peers_down"]] == [peer]
            assert latigo_ok(config, "status").startswith(f"PEER DOWN:        {peer} since ")
            assert done(url) == 0

            proxy.set_mode("forward")
            total = count(url)
            assert wait_for(lambda: done(url) == total, timeout=120), output.text()
            assert get(f"http://127.0.0.1:{port}/readyz")[0] == 200
            assert f'latigo_peer_up{{peer="{peer}"}} 1.0' in get(f"http://127.0.0.1:{port}/metrics")[1]
            assert json.loads(latigo_ok(config, "status", "--json"))["peers_down"] == []
        finally:
            executor.send_signal(signal.SIGTERM)
            try:
                executor.wait(30)
            except subprocess.TimeoutExpired:
                executor.kill()
    assert "is down" in output.text() and "is back" in output.text()
