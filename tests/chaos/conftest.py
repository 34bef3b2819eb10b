"""Fixtures of the chaos suite: a fresh migrated database per test (PostgreSQL on the machine's server,
a private PostgreSQL cluster that may be restarted, or an SQLite file), the latigo processes a test
started (reaped at teardown), and the per-scenario report (printed at the end of the run and written to
<pytest base temp>/chaos-summary.json)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from latigo.config import DatabaseSettings
from latigo.storage import migrations
from latigo.storage.db import create_engine_for
from tests.chaos.harness import REPORT, Processes
from tests.conftest import PG_ADMIN_URL, create_pg_database, drop_pg_database
from tests.support.postgres_cluster import PostgresCluster, serve_for_tests


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT.results:
        terminalreporter.section("chaos scenarios")
        for result in REPORT.results:
            terminalreporter.write_line(result.line())
        total = sum(result.wall_seconds for result in REPORT.results)
        terminalreporter.write_line(f"scenario wall time {total:.0f} s; summary: {REPORT.path}")


@pytest.fixture(scope="session", autouse=True)
def chaos_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    REPORT.path = tmp_path_factory.getbasetemp() / "chaos-summary.json"
    yield
    REPORT.write()


@dataclass
class Database:
    backend: str
    url: str
    name: str = ""
    """PostgreSQL: the database's name (whose connections a scenario kills)."""
    admin_url: str = ""
    """PostgreSQL: a URL on the same server, to a database the scenario does not touch."""
    path: Path | None = None
    """SQLite: the file."""


def _migrate(url: str) -> None:
    engine = create_engine_for(DatabaseSettings(url=url))
    try:
        migrations.upgrade(engine)
    finally:
        engine.dispose()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path / "logs")
    yield processes
    processes.reap_all()


@pytest.fixture
def pg_database() -> Iterator[Database]:
    """A fresh migrated database on the machine's PostgreSQL server, dropped afterwards (its connections
    may be killed: no other test uses it)."""
    url = create_pg_database("latigo_chaos")
    _migrate(url)
    yield Database("postgresql", url, url.rsplit("/", 1)[1], PG_ADMIN_URL)
    drop_pg_database(url)


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Database:
    path = tmp_path / "latigo.db"
    url = f"sqlite:///{path}"
    _migrate(url)
    return Database("sqlite", url, path=path)


@pytest.fixture(params=["postgresql", "sqlite"])
def database(request: pytest.FixtureRequest) -> Database:
    """Each backend in turn."""
    return request.getfixturevalue("pg_database" if request.param == "postgresql" else "sqlite_database")


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster (tests/support/postgres_cluster.py) for the scenarios that restart the
    server; about 2 s to initdb and start, once per session."""
    yield from serve_for_tests()


@pytest.fixture
def private_pg_database(private_pg: PostgresCluster) -> Iterator[Database]:
    if not private_pg.running():
        private_pg.start()
    url = private_pg.create_database()
    _migrate(url)
    yield Database("postgresql (private cluster)", url, url.rsplit("/", 1)[1], private_pg.url())
    if not private_pg.running():
        private_pg.start()
    private_pg.drop_database(url)
