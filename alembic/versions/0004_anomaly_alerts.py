"""anomaly alert events

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 23:00:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('anomaly_alerts',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('event', sa.String(length=16), nullable=False),
    sa.Column('model', sa.String(length=255), nullable=False),
    sa.Column('episode_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('key', 'event', name=op.f('pk_anomaly_alerts'))
    )


def downgrade() -> None:
    op.drop_table('anomaly_alerts')
