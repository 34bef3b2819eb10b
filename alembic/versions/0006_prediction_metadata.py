"""prediction metadata: what the Metadata API was told about each model revision's series

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 10:15:00

A new table only: existing rows are untouched, so upgrade and downgrade are immediate.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('prediction_metadata',
    sa.Column('project', sa.String(length=255), nullable=False),
    sa.Column('model', sa.String(length=255), nullable=False),
    sa.Column('revision', sa.String(length=255), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('model_id', sa.String(length=255), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('project', 'model', 'revision', name=op.f('pk_prediction_metadata'))
    )


def downgrade() -> None:
    op.drop_table('prediction_metadata')
