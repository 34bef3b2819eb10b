"""The alembic migrations create exactly the schema of latigo.storage.tables, on both databases."""

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from latigo.config import DatabaseSettings
from latigo.errors import SchemaOutdatedError
from latigo.storage import migrations
from latigo.storage.db import create_engine_for
from latigo.storage.tables import Base
from tests.conftest import create_pg_database, drop_pg_database

pytestmark = pytest.mark.integration
TABLES = {"models", "schedule_state", "tasks", "predictions", "task_queue", "eventhub_ownership",
          "eventhub_checkpoints", "dead_letters"}


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
    return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}


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
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_services_refuse_a_schema_that_is_behind(empty_engine):
    with pytest.raises(SchemaOutdatedError, match="latigo db upgrade"):
        migrations.ensure_schema_current(empty_engine)
    migrations.upgrade(empty_engine)
    migrations.ensure_schema_current(empty_engine)
