"""Engines for PostgreSQL (psycopg2) and SQLite, set up for many concurrent workers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import make_url

from latigo.errors import ConfigError
from latigo.settings import DatabaseSettings

SQLITE_BUSY_TIMEOUT_MS = 30_000


def create_engine_for(settings: DatabaseSettings) -> Engine:
    """An engine for the configured URL; SQLite gets WAL, foreign keys and a busy timeout."""
    try:
        url = make_url(settings.url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with the URL in it
        raise ConfigError(f"database.url: not a database URL ({type(exc).__name__})") from None
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    if url.get_backend_name() != "postgresql":
        raise ConfigError(f"database.url: unsupported database {url.get_backend_name()!r}; use postgresql or sqlite")
    timeout = int(settings.connect_timeout.total_seconds())
    return create_engine(
        url,
        # ON CONFLICT inserts do not qualify for insertmanyvalues: batch them (one round trip per page).
        executemany_mode="values_plus_batch",
        executemany_batch_page_size=1000,
        pool_size=settings.pool_size,
        max_overflow=settings.pool_size,
        # No ping before each transaction (a round trip on every claim and finish): a connection found dead
        # invalidates the whole pool, and the work that hit it is released and redone (storage/faults.py).
        pool_pre_ping=False,
        connect_args={"connect_timeout": timeout, "application_name": "latigo",
                      "options": f"-c synchronous_commit={'on' if settings.synchronous_commit else 'off'}"},
    )


def _sqlite_engine(url: Any) -> Engine:
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so BEGIN IMMEDIATE can be issued when asked.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get("sqlite_immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def database_location(url: str) -> str:
    """Where the database is, for people: host:port/name for PostgreSQL, the file for SQLite (never the
    password)."""
    try:
        parsed = make_url(url)
    except Exception:
        return "the configured database"
    if parsed.get_backend_name() == "sqlite":
        return f"SQLite file {parsed.database or ':memory:'}"
    return f"PostgreSQL at {parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"


def utc_from_db(value: Any) -> datetime | None:
    """A timestamp from a query result as tz-aware UTC. Aggregates (min/max) bypass the column type, and on
    SQLite they come back as naive text."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    return datetime.fromisoformat(str(value)).replace(tzinfo=timezone.utc)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that takes SQLite's write lock up front (BEGIN IMMEDIATE: no deadlocking
    lock upgrades between concurrent writers); on PostgreSQL an ordinary transaction."""
    with engine.connect() as connection:
        if is_sqlite(engine):
            connection.execution_options(sqlite_immediate=True)
        with connection.begin():
            yield connection
