"""Shared fixtures: throwaway PostgreSQL databases on the machine's server, SQLite files, configs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from latigo.settings import DatabaseSettings
from latigo.storage import migrations
from latigo.storage.db import create_engine_for
from latigo.storage.tables import Base

PG_ADMIN_URL = os.environ.get("LATIGO_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def create_pg_database(prefix: str = "latigo_test") -> str:
    """A new empty database on the test server; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """One throwaway PostgreSQL database for the whole session, migrated to head."""
    url = create_pg_database()
    engine = create_engine_for(DatabaseSettings(url=url))
    migrations.upgrade(engine)
    engine.dispose()
    yield url
    drop_pg_database(url)


def truncate_all(engine: Engine) -> None:
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
            connection.exec_driver_sql(f"TRUNCATE {names}")
        else:
            for table in reversed(Base.metadata.sorted_tables):
                connection.execute(table.delete())


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A migrated, empty database: a fresh SQLite file, or the session's PostgreSQL database emptied."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'latigo.db'}"
        engine = create_engine_for(DatabaseSettings(url=url))
        migrations.upgrade(engine)
    else:
        url = request.getfixturevalue("pg_url")
        engine = create_engine_for(DatabaseSettings(url=url))
        truncate_all(engine)
    engine.dispose()
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_engine_for(DatabaseSettings(url=db_url))
    yield engine
    engine.dispose()


@pytest.fixture(autouse=True)
def isolated_secret_registry() -> Iterator[None]:
    """Secrets registered by one test (a config it loaded) must not mask text in another."""
    from latigo import secrets

    saved = set(secrets._registered)
    yield
    with secrets._lock:
        secrets._registered.clear()
        secrets._registered.update(saved)


@pytest.fixture(autouse=True)
def closed_circuit_breakers() -> Iterator[None]:
    """A peer one test brought down is not down for the next (the breakers are per process)."""
    from latigo.peers import PEERS

    yield
    PEERS.reset()


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """An engine on the session's PostgreSQL database, emptied first."""
    engine = create_engine_for(DatabaseSettings(url=pg_url))
    truncate_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def broker() -> Iterator[object]:
    """An Event Hubs-compatible AMQP broker on a free port: hub "tasks" with 4 partitions."""
    from tests.support.eventhub_broker import EventHubBroker

    with EventHubBroker(hub="tasks", partitions=4) as running:
        yield running
