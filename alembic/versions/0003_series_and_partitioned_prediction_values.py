"""predictions as series + time-partitioned prediction_values, read through a predictions view

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 22:40:00

Existing rows are kept: every (model, output, tag) becomes a series, every value moves to
prediction_values (on PostgreSQL into daily partitions covering the data), and `predictions` becomes a
view with the old columns, so queries and dashboards keep working.
"""
from datetime import datetime, timedelta, timezone
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

VIEW = ("CREATE VIEW predictions AS SELECT s.model, s.output, s.tag, v.ts, v.value "
        "FROM prediction_values v JOIN series s ON s.id = v.series_id")
DAY = timedelta(days=1)


def upgrade() -> None:
    bind = op.get_bind()
    postgresql = bind.dialect.name == "postgresql"
    op.create_table('series',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('model', sa.String(length=255), nullable=False),
    sa.Column('output', sa.String(length=64), nullable=False),
    sa.Column('tag', sa.String(length=255), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_series'))
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_series_model_output_tag'), ['model', 'output', 'tag'], unique=True)
    op.create_table('prediction_values',
    sa.Column('series_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('value', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('series_id', 'ts', name=op.f('pk_prediction_values')),
    postgresql_partition_by='RANGE (ts)',
    sqlite_with_rowid=False
    )
    op.execute("INSERT INTO series (model, output, tag) SELECT DISTINCT model, output, tag FROM predictions "
               "ORDER BY model, output, tag")
    if postgresql:
        _partitions_for_existing_rows(bind)
    op.execute("INSERT INTO prediction_values (series_id, ts, value) SELECT s.id, p.ts, p.value FROM predictions p "
               "JOIN series s ON s.model = p.model AND s.output = p.output AND s.tag = p.tag")
    op.drop_table('predictions')
    op.execute(VIEW)
    if postgresql:
        op.execute("ANALYZE series")
        op.execute("ANALYZE prediction_values")  # statistics for `latigo status` and the planner at once


def _partitions_for_existing_rows(bind) -> None:
    """Daily partitions from the first to the last stored day (new ones come from latigo itself)."""
    bind.exec_driver_sql("SET LOCAL timezone = 'UTC'")
    first, last = bind.execute(sa.text("SELECT min(ts), max(ts) FROM predictions")).one()
    if first is None:
        return
    day = datetime(first.year, first.month, first.day, tzinfo=timezone.utc)
    while day <= last:
        bind.exec_driver_sql(
            f'CREATE TABLE "prediction_values_p{day:%Y%m%dt%H%M}" PARTITION OF prediction_values '
            f"FOR VALUES FROM ('{day.isoformat()}') TO ('{(day + DAY).isoformat()}')")
        day += DAY


def downgrade() -> None:
    op.create_table('predictions_text',
    sa.Column('model', sa.String(length=255), nullable=False),
    sa.Column('output', sa.String(length=64), nullable=False),
    sa.Column('tag', sa.String(length=255), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('value', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('model', 'output', 'tag', 'ts', name=op.f('pk_predictions'))
    )
    op.execute("INSERT INTO predictions_text (model, output, tag, ts, value) "
               "SELECT model, output, tag, ts, value FROM predictions")
    op.execute("DROP VIEW predictions")
    op.drop_table('prediction_values')  # and its partitions, on PostgreSQL
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_model_output_tag'))
    op.drop_table('series')
    op.rename_table('predictions_text', 'predictions')
