"""What a person sees when latigo cannot start: one line naming the problem, a documented exit code."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.support.processes import latigo, write_config

pytestmark = pytest.mark.integration
COMMANDS = [["status"], ["db", "current"], ["db", "upgrade"], ["scheduler", "--once"],
            ["executor", "--exit-when-idle", "1"], ["backfill", "--from", "2026-01-01T00:00Z", "--to",
                                                    "2026-01-01T01:00Z", "--no-progress"], ["tasks", "list"],
            ["db", "prune"]]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(config, *args) -> tuple[int, str]:
    process = latigo(config, *args)
    output, _ = process.communicate(timeout=120)
    return process.returncode, output


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c[:2]) for c in COMMANDS])
def test_an_unreachable_postgresql_is_one_line_naming_host_and_port_and_exit_4(tmp_path, command):
    port = closed_port()
    config = write_config(tmp_path / "c.yaml", database={"url": f"postgresql://latigo:hunter2@127.0.0.1:{port}/x",
                                                         "connect_timeout": "2s"}, metrics={"enabled": False})
    code, output = run(config, *command)
    assert code == 4, output
    assert output.strip().splitlines() == [
        f"latigo: cannot reach the database (PostgreSQL at 127.0.0.1:{port}/x): connection to server at "
        f'"127.0.0.1", port {port} failed: Connection refused']
    assert "hunter2" not in output and "Traceback" not in output


def test_an_sqlite_file_that_cannot_be_opened_names_the_file(tmp_path):
    config = write_config(tmp_path / "c.yaml", database={"url": "sqlite:////nonexistent/dir/latigo.db"})
    code, output = run(config, "status")
    assert (code, output.strip()) == (4, "latigo: cannot reach the database (SQLite file /nonexistent/dir/latigo.db):"
                                         " unable to open database file")


@pytest.mark.parametrize(("variable", "suggestion"), [
    ("LATIGO_SCHEDULER_INTERVAL", "LATIGO_SCHEDULER__INTERVAL"),
    ("LATIGO_INTERNAL_DATABSE", "LATIGO_INTERNAL_DATABASE"),
    ("LATIGO_EXECUTOR_CONCURRENCY", "LATIGO_EXECUTOR__CONCURRENCY"),
])
def test_an_unknown_latigo_variable_is_named_with_a_did_you_mean(tmp_path, variable, suggestion):
    config = write_config(tmp_path / "c.yaml", metrics={"enabled": False})
    process = subprocess.run(["latigo", "--config", str(config), "check-config"], capture_output=True, text=True,
                             env={"PATH": "/usr/bin:/bin:/usr/local/bin", **_python_path(), variable: "1h"})
    assert process.returncode == 2
    assert process.stderr.strip() == (f"latigo: config error: environment variable {variable}: not a latigo "
                                      f"setting (did you mean {suggestion}?)")


def _python_path() -> dict[str, str]:
    import os
    import sys

    return {"PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin"}


def test_check_config_builds_every_part_and_reports_what_startup_would_refuse(tmp_path):
    config = write_config(tmp_path / "c.yaml", task_queue={"type": "eventhub"},
                          model_execution={"type": "gordo", "base_url": "http://gordo", "project": "p",
                                           "tenant": "t", "client_id": "c"})
    code, output = run(config, "check-config")
    assert code == 2
    assert "#  FAIL task_queue: task_queue.connection_string is required for the eventhub task queue" in output
    assert ("#  FAIL model_execution: gordo: Azure AD auth needs tenant, client_id, client_secret and scope; "
            "missing client_secret, scope") in output
    assert "#  ok   sensor_data: built (synthetic)" in output


def test_check_config_connect_probes_each_peer(tmp_path, pg_url, pg_engine):
    port = closed_port()
    config = write_config(tmp_path / "c.yaml", database={"url": pg_url},
                          model_information={"type": "gordo", "base_url": f"http://127.0.0.1:{port}",
                                             "project": "p", "max_retries": 0, "timeout": "2s"})
    code, output = run(config, "check-config", "--connect")
    assert code == 2, output
    assert f"#  ok   database: PostgreSQL at 127.0.0.1:5432/{pg_url.rsplit('/', 1)[1]}: schema" in output
    assert "#  ok   task_queue: reachable; 0 tasks in the queue" in output
    assert (f"#  FAIL model_information: TransientError: gordo: GET http://127.0.0.1:{port}/gordo/v0/p/revisions "
            "failed after 1 attempts: ConnectionError") in output
    assert "#  ok   sensor_information: 20 sensors listed" in output


def test_two_processes_on_one_host_share_the_metrics_port_without_crashing(tmp_path):
    from latigo.observability import Health, start_http_server
    from latigo.settings import MetricsSettings

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_http_server(MetricsSettings(host="127.0.0.1", port=port), Health(), 60)
        try:
            assert server is not None and server.port not in (port, 0)
        finally:
            server.close()
