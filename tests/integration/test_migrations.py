"""The alembic migrations create exactly the schema of latigo.storage.tables, on both databases."""

import json
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from latigo.errors import SchemaOutdatedError
from latigo.settings import DatabaseSettings
from latigo.storage import migrations
from latigo.storage.db import create_engine_for
from latigo.storage.partitions import Partitions
from latigo.storage.tables import Base, is_managed_elsewhere
from latigo.types import Task, TimeRange, legacy_task_id, make_task_id
from tests.conftest import create_pg_database, drop_pg_database

pytestmark = pytest.mark.integration
TABLES = {"models", "schedule_state", "tasks", "series", "prediction_values", "task_queue", "eventhub_ownership",
          "eventhub_checkpoints", "dead_letters", "anomaly_alerts", "prediction_metadata", "peer_status",
          "model_summary", "task_hours"}
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
    migrations.upgrade(empty_engine, project="plant-a")

    def stored():
        with empty_engine.connect() as connection:
            found = connection.execute(sa.text("SELECT model, output, tag, ts, value FROM predictions")).all()
        return sorted((m, o, t, _utc(ts), v) for m, o, t, ts, v in found)  # one project: the old columns

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


# ------------------------------------------------------------------ 0005: a model is (project, name)

WINDOWS = [TimeRange(T0 + i * timedelta(minutes=30), T0 + (i + 1) * timedelta(minutes=30)) for i in range(3)]


def _fill_before_projects(engine):
    """Rows as latigo wrote them at 0004: ledger, queue, schedule state, series and values, alerts, models."""
    migrations.upgrade(engine, "0004")
    models = ("pump-a", "pump-b")
    with engine.begin() as c:
        for m in models:
            for w in WINDOWS:
                c.execute(sa.text("INSERT INTO tasks (task_id, model, window_start, window_end, state, attempts, runs, "
                                  "lost) VALUES (:id, :m, :s, :e, 'done', 0, 1, 0)"),
                          {"id": legacy_task_id(m, w), "m": m, "s": _db_time(engine, w.start),
                           "e": _db_time(engine, w.end)})
            c.execute(sa.text("INSERT INTO schedule_state (model, last_window_end, updated_at) VALUES (:m, :e, :e)"),
                      {"m": m, "e": _db_time(engine, WINDOWS[-1].end)})
            c.execute(sa.text("INSERT INTO series (model, output, tag) VALUES (:m, 'model-output', 'T1')"), {"m": m})
        queued = TimeRange(WINDOWS[-1].end, WINDOWS[-1].end + timedelta(minutes=30))
        body = json.dumps({"schema": 1, "task_id": legacy_task_id("pump-a", queued), "model": "pump-a",
                           "start": queued.start.isoformat(), "end": queued.end.isoformat()})
        c.execute(sa.text("INSERT INTO task_queue (task_id, body, available_at, enqueued_at, deliveries) "
                          "VALUES (:id, :b, :t, :t, 0)"),
                  {"id": legacy_task_id("pump-a", queued), "b": body, "t": _db_time(engine, T0)})
        c.execute(sa.text("INSERT INTO anomaly_alerts (key, event, model, episode_start, claimed_at) "
                          "VALUES ('k', 'started', 'pump-a', :t, :t)"), {"t": _db_time(engine, T0)})
        c.execute(sa.text("INSERT INTO models (name, project, revision, tags, target_tags, resolution_seconds, "
                          "model_offset, status, status_reason, spec) VALUES ('pump-a', '', '', '[]', '[]', 600, 0, "
                          "'ready', '', '{}')"))
    return models, queued


def _db_time(engine, moment):
    return moment.replace(tzinfo=None) if engine.dialect.name == "sqlite" else moment


def test_projects_migration_keys_every_row_by_the_named_project_and_goes_back(empty_engine):
    models, queued = _fill_before_projects(empty_engine)
    with empty_engine.begin() as c:
        series_ids = sorted(c.execute(sa.text("SELECT id FROM series")).scalars())
    if empty_engine.dialect.name == "postgresql":
        Partitions(empty_engine).ensure(T0, T0 + timedelta(minutes=1))
    with empty_engine.begin() as c:
        c.execute(sa.text("INSERT INTO prediction_values (series_id, ts, value) VALUES (:s, :t, 1.5)"),
                  [{"s": s, "t": _db_time(empty_engine, T0)} for s in series_ids])
    migrations.upgrade(empty_engine, project="plant-a")
    with empty_engine.connect() as c:
        tasks = c.execute(sa.text("SELECT task_id, project, model, window_start, window_end FROM tasks")).all()
        assert len(tasks) == len(models) * len(WINDOWS)
        for task_id, project, model, start, end in tasks:
            assert project == "plant-a"
            assert task_id == make_task_id(model, TimeRange(_utc(start), _utc(end)), "plant-a")
        assert set(c.execute(sa.text("SELECT project, model FROM schedule_state")).all()) == \
            {("plant-a", m) for m in models}
        assert set(c.execute(sa.text("SELECT project FROM series")).scalars()) == {"plant-a"}
        assert sorted(c.execute(sa.text("SELECT id FROM series")).scalars()) == series_ids  # values keep their key
        queue_id, body = c.execute(sa.text("SELECT task_id, body FROM task_queue")).one()
        assert Task.from_json(body) == Task("pump-a", queued, project="plant-a")
        assert queue_id == Task("pump-a", queued, project="plant-a").task_id
        assert c.execute(sa.text("SELECT project, model FROM anomaly_alerts")).one() == ("plant-a", "pump-a")
        assert c.execute(sa.text("SELECT project, name FROM models")).one() == ("plant-a", "pump-a")
        assert c.execute(sa.text("SELECT project, model, value FROM predictions ORDER BY model")).all() == \
            [("plant-a", m, 1.5) for m in models]
    migrations.downgrade(empty_engine, "0004")
    with empty_engine.connect() as c:
        for task_id, model, start, end in c.execute(sa.text("SELECT task_id, model, window_start, window_end "
                                                            "FROM tasks")):
            assert task_id == legacy_task_id(model, TimeRange(_utc(start), _utc(end)))
        assert json.loads(c.execute(sa.text("SELECT body FROM task_queue")).scalar())["schema"] == 1
        assert c.execute(sa.text("SELECT count(*) FROM schedule_state")).scalar() == len(models)


def test_projects_migration_refuses_rows_without_a_project_to_give_them(empty_engine):
    _fill_before_projects(empty_engine)
    with pytest.raises(Exception, match="--project NAME"):
        migrations.upgrade(empty_engine)
    assert migrations.current_revision(empty_engine) == "0004"  # nothing changed


def test_projects_downgrade_refuses_two_projects(empty_engine):
    migrations.upgrade(empty_engine)
    with empty_engine.begin() as c:
        c.execute(sa.text("INSERT INTO series (project, model, output, tag) VALUES "
                          "('plant-a', 'pump', 'o', 't'), ('plant-b', 'pump', 'o', 't')"))
    with pytest.raises(Exception, match="2 projects .plant-a, plant-b."):
        migrations.downgrade(empty_engine, "0004")
    assert migrations.current_revision(empty_engine) == migrations.head_revision()
