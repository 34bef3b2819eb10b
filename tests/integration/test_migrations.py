"""The alembic migrations create exactly the schema of latigo.storage.tables, on both databases."""

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from latigo.errors import SchemaOutdatedError
from latigo.settings import DatabaseSettings
from latigo.storage import migrations
from latigo.storage.db import create_engine_for
from latigo.storage.tables import Base, is_managed_elsewhere
from tests.conftest import create_pg_database, drop_pg_database

pytestmark = pytest.mark.integration
TABLES = {"models", "schedule_state", "tasks", "series", "prediction_values", "task_queue", "eventhub_ownership",
          "eventhub_checkpoints", "dead_letters", "anomaly_alerts"}
T0 = datetime(2026, 1, 1, 23, 50, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_engine(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        url = create_pg_database("latigo_mig")
    engine = create_engine_for(DatabaseSettings(url=url))
    yield engine
    engine.dispose()
    if request.param == "postgresql":
        drop_pg_database(url)


def table_names(engine):
    return {name for name in sa.inspect(engine).get_table_names()
            if name != "alembic_version" and not is_managed_elsewhere(name)}


def test_upgrade_creates_every_table_and_downgrade_removes_them(empty_engine):
    migrations.upgrade(empty_engine)
    assert table_names(empty_engine) == TABLES
    assert migrations.current_revision(empty_engine) == migrations.head_revision()
    migrations.downgrade(empty_engine, "base")
    assert table_names(empty_engine) == set()
    assert migrations.current_revision(empty_engine) is None


def test_models_and_migrations_agree(empty_engine):
    migrations.upgrade(empty_engine)
    with empty_engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True,
                                                                "include_object": include_object})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_services_refuse_a_schema_that_is_behind(empty_engine):
    with pytest.raises(SchemaOutdatedError, match="latigo db upgrade"):
        migrations.ensure_schema_current(empty_engine)
    migrations.upgrade(empty_engine)
    migrations.ensure_schema_current(empty_engine)


def include_object(obj, name, type_, reflected, compare_to):
    return not (type_ == "table" and is_managed_elsewhere(name))


def test_moving_predictions_to_series_keeps_every_row_and_goes_back(empty_engine):
    migrations.upgrade(empty_engine, "0002")
    rows = [{"model": m, "output": o, "tag": t, "ts": T0 + i * timedelta(minutes=10), "value": i + 0.5}
            for m in ("pump-a", "pump-b") for o in ("model-output", "total-anomaly-scaled") for t in ("T1", "T2")
            for i in range(4)]  # spans midnight: two days, two partitions on PostgreSQL
    old = sa.table("predictions", sa.column("model"), sa.column("output"), sa.column("tag"),
                   sa.column("ts", sa.DateTime(timezone=True)), sa.column("value"))
    with empty_engine.begin() as connection:
        connection.execute(old.insert(), rows)
    migrations.upgrade(empty_engine)

    def stored():
        with empty_engine.connect() as connection:
            found = connection.execute(sa.text("SELECT model, output, tag, ts, value FROM predictions")).all()
        return sorted((m, o, t, _utc(ts), v) for m, o, t, ts, v in found)

    expected = sorted((r["model"], r["output"], r["tag"], r["ts"], r["value"]) for r in rows)
    assert stored() == expected
    with empty_engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM series")).scalar() == 8
    if empty_engine.dialect.name == "postgresql":
        partitions = {name for name in sa.inspect(empty_engine).get_table_names() if is_managed_elsewhere(name)}
        assert partitions == {"prediction_values_p20260101t0000", "prediction_values_p20260102t0000"}
    migrations.downgrade(empty_engine, "0002")
    assert stored() == expected


def _utc(value):
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def test_the_code_names_the_newest_migration_as_its_schema():
    from latigo.storage.schema import SCHEMA_REVISION

    assert migrations.head_revision() == SCHEMA_REVISION  # bump SCHEMA_REVISION with every migration
