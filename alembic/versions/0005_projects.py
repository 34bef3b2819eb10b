"""a model is (project, name): project columns and keys, task revisions

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 19:10:00

Every existing row gets the project it was written for: `latigo db upgrade --project NAME`, else the one
project latigo's configuration names (`model_information.project`, or `default` for providers without
projects); a database holding rows with no project to give them is refused with that advice, before any
change. Task ids hash the project now, so they are recomputed (in SQL on PostgreSQL, in batches on
SQLite), and the database queue's bodies move to task schema 2. `predictions` gains a `project` column.

Downgrade works while the database holds one project (its rows lose the column); with several it is
refused, since two models of one name would merge.
"""
import hashlib
import json
from datetime import datetime, timezone
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import context, op

revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

OLD_VIEW = ("CREATE VIEW predictions AS SELECT s.model, s.output, s.tag, v.ts, v.value "
            "FROM prediction_values v JOIN series s ON s.id = v.series_id")
NEW_VIEW = ("CREATE VIEW predictions AS SELECT s.project, s.model, s.output, s.tag, v.ts, v.value "
            "FROM prediction_values v JOIN series s ON s.id = v.series_id")
KEYED = ("tasks", "schedule_state", "series", "anomaly_alerts", "models", "task_queue")
BATCH = 5000


def upgrade() -> None:
    bind = op.get_bind()
    project = _project_for_existing_rows(bind)
    op.execute("DROP VIEW predictions")
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('project', sa.String(length=255), nullable=False, server_default=project))
        batch.add_column(sa.Column('revision', sa.String(length=64), nullable=True))
        batch.drop_index('ix_tasks_model_window_end')
        batch.create_index('ix_tasks_project_model_window_end', ['project', 'model', 'window_end'], unique=False)
    with op.batch_alter_table('tasks') as batch:
        batch.alter_column('project', server_default=None)
    _rehash_task_ids(bind, "tasks", with_project=True)
    _rewrite_queue(bind, project)
    with op.batch_alter_table('schedule_state') as batch:
        batch.add_column(sa.Column('project', sa.String(length=255), nullable=False, server_default=project))
        batch.drop_constraint('pk_schedule_state', type_='primary')
        batch.create_primary_key('pk_schedule_state', ['project', 'model'])
    with op.batch_alter_table('schedule_state') as batch:
        batch.alter_column('project', server_default=None)
    with op.batch_alter_table('series') as batch:
        batch.add_column(sa.Column('project', sa.String(length=255), nullable=False, server_default=project))
        batch.drop_index('ix_series_model_output_tag')
        batch.create_index('ix_series_project_model_output_tag', ['project', 'model', 'output', 'tag'], unique=True)
    with op.batch_alter_table('series') as batch:
        batch.alter_column('project', server_default=None)
    with op.batch_alter_table('anomaly_alerts') as batch:
        batch.add_column(sa.Column('project', sa.String(length=255), nullable=False, server_default=project))
    with op.batch_alter_table('anomaly_alerts') as batch:
        batch.alter_column('project', server_default=None)
    _rekey_alerts(bind, project)
    with op.batch_alter_table('dead_letters') as batch:
        batch.add_column(sa.Column('project', sa.String(length=255), nullable=True))
        batch.add_column(sa.Column('model', sa.String(length=255), nullable=True))
    op.execute(sa.text("UPDATE models SET project = :project WHERE project = '' OR project IS NULL")
               .bindparams(project=project))
    with op.batch_alter_table('models') as batch:
        batch.alter_column('project', existing_type=sa.String(length=255), nullable=False)
        batch.drop_constraint('pk_models', type_='primary')
        batch.create_primary_key('pk_models', ['project', 'name'])
    op.execute(NEW_VIEW)
    if bind.dialect.name == "postgresql":
        for table in ("tasks", "series", "schedule_state"):
            op.execute(f"ANALYZE {table}")


def downgrade() -> None:
    bind = op.get_bind()
    projects = sorted({p for table in ("tasks", "series", "schedule_state", "anomaly_alerts", "models")
                       for p in bind.execute(sa.text(f"SELECT DISTINCT project FROM {table}")).scalars()})
    if len(projects) > 1:
        shown = ", ".join(projects[:5]) + (f" and {len(projects) - 5} more" if len(projects) > 5 else "")
        raise RuntimeError(f"downgrade below 0005 refused: the database holds {len(projects)} projects ({shown}); "
                           "without a project column their models of the same name would merge")
    op.execute("DROP VIEW predictions")
    with op.batch_alter_table('models') as batch:
        batch.drop_constraint('pk_models', type_='primary')
        batch.create_primary_key('pk_models', ['name'])
        batch.alter_column('project', existing_type=sa.String(length=255), nullable=True)
    with op.batch_alter_table('dead_letters') as batch:
        batch.drop_column('model')
        batch.drop_column('project')
    _rekey_alerts(bind, None)
    with op.batch_alter_table('anomaly_alerts') as batch:
        batch.drop_column('project')
    with op.batch_alter_table('series') as batch:
        batch.drop_index('ix_series_project_model_output_tag')
        batch.create_index('ix_series_model_output_tag', ['model', 'output', 'tag'], unique=True)
        batch.drop_column('project')
    with op.batch_alter_table('schedule_state') as batch:
        batch.drop_constraint('pk_schedule_state', type_='primary')
        batch.create_primary_key('pk_schedule_state', ['model'])
        batch.drop_column('project')
    _rehash_task_ids(bind, "tasks", with_project=False)
    _rewrite_queue(bind, None)
    with op.batch_alter_table('tasks') as batch:
        batch.drop_index('ix_tasks_project_model_window_end')
        batch.create_index('ix_tasks_model_window_end', ['model', 'window_end'], unique=False)
        batch.drop_column('revision')
        batch.drop_column('project')
    op.execute(OLD_VIEW)


# ------------------------------------------------------------------ the project of existing rows


def _project_for_existing_rows(bind) -> str:
    """The project the rows already here belong to; refuses (before any change) when rows exist and none is
    named."""
    named = context.get_x_argument(as_dictionary=True).get("project") or context.config.attributes.get("project")
    if named:
        return str(named)
    holding = [table for table in KEYED if bind.execute(sa.text(f"SELECT 1 FROM {table} LIMIT 1")).first()]
    if holding:
        raise RuntimeError(
            f"migration 0005 gives every existing row a project, and none is named: the tables {', '.join(holding)} "
            "hold rows; run `latigo db upgrade --project NAME` with the Gordo project they were written for")
    return "default"


# ------------------------------------------------------------------ task ids


def _iso_sql(column: str) -> str:
    """PostgreSQL text equal to Python's datetime.isoformat() of a UTC timestamp."""
    utc = f"({column} AT TIME ZONE 'UTC')"
    return (f"to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || "
            f"CASE WHEN extract(microseconds FROM {utc})::bigint % 1000000 <> 0 "
            f"THEN '.' || to_char({utc}, 'US') ELSE '' END || '+00:00'")


def _rehash_task_ids(bind, table: str, with_project: bool) -> None:
    """Recompute every task id for the new (or, going down, the old) key."""
    if bind.dialect.name == "postgresql":
        nul = "'\\x00'::bytea"
        parts = [f"convert_to({_iso_sql('window_end')}, 'UTF8')"]
        parts.insert(0, f"convert_to({_iso_sql('window_start')}, 'UTF8')")
        parts.insert(0, "convert_to(model, 'UTF8')")
        if with_project:
            parts.insert(0, "convert_to(project, 'UTF8')")
        key = f" || {nul} || ".join(parts)
        op.execute(f"UPDATE {table} SET task_id = left(encode(sha256({key}), 'hex'), 32)")
        return
    rows = bind.execute(sa.text(f"SELECT task_id, {'project' if with_project else 'NULL'}, model, window_start, "
                                f"window_end FROM {table}")).all()
    changes = [{"old": old, "new": _task_id(project, model, _utc(start), _utc(end))}
               for old, project, model, start, end in rows]
    _apply_id_changes(bind, table, changes)


def _apply_id_changes(bind, table: str, changes: list[dict]) -> None:
    # Through a prefix no id has, so a new id never meets an old one of another row on the way.
    statement = sa.text(f"UPDATE {table} SET task_id = :new WHERE task_id = :old")
    staged = [{"old": c["old"], "new": "~" + c["new"]} for c in changes if c["old"] != c["new"]]
    for start in range(0, len(staged), BATCH):
        bind.execute(statement, staged[start:start + BATCH])
    bind.execute(sa.text(f"UPDATE {table} SET task_id = substr(task_id, 2) WHERE task_id LIKE '~%'"))


def _task_id(project, model: str, start: datetime, end: datetime) -> str:
    parts = ([project] if project is not None else []) + [model, start.isoformat(), end.isoformat()]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]


def _utc(value) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _rewrite_queue(bind, project) -> None:
    """The database queue's rows: ids and bodies in the task schema of the other side of this migration."""
    rows = bind.execute(sa.text("SELECT task_id, body FROM task_queue")).all()
    changes, bodies = [], []
    for old, body in rows:
        try:
            data = json.loads(body)
            start, end = _utc(data["start"]), _utc(data["end"])
        except (ValueError, KeyError, TypeError):
            continue  # undecodable: left as it is for the executor to dead-letter with its reason
        if project is None:
            data.pop("project", None)
            data["schema"] = 1
        else:
            data.update(schema=2, project=project)
        data["task_id"] = _task_id(data.get("project"), data["model"], start, end)
        changes.append({"old": old, "new": data["task_id"]})
        bodies.append({"id": old, "body": json.dumps(data, separators=(",", ":"))})
    for start_at in range(0, len(bodies), BATCH):
        bind.execute(sa.text("UPDATE task_queue SET body = :body WHERE task_id = :id"), bodies[start_at:start_at + BATCH])
    _apply_id_changes(bind, "task_queue", changes)


def _rekey_alerts(bind, project) -> None:
    """Alert keys hash the project too (latigo.anomalies.Episode.key), so a known episode is not
    announced again after the upgrade."""
    project_column = "project" if project is not None else "NULL"
    rows = bind.execute(sa.text(f"SELECT key, event, {project_column}, model, episode_start FROM anomaly_alerts")).all()
    for key, event, row_project, model, start in rows:
        parts = ([row_project] if row_project is not None else []) + [model, _utc(start).isoformat()]
        new = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:32]
        bind.execute(sa.text("UPDATE anomaly_alerts SET key = :new WHERE key = :old AND event = :event"),
                     {"new": new, "old": key, "event": event})
