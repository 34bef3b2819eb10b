"""peers an executor sees down: one row per (peer, executor) while its circuit breaker is open

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 11:00:00

Executors write a row when a peer's breaker opens, refresh it while it stays open and delete it when the
peer is back; `latigo status`, the web page and the scheduler's readiness read it. Nothing else depends
on it, so the downgrade just drops it.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'peer_status',
        sa.Column('peer', sa.String(length=255), nullable=False),
        sa.Column('executor', sa.String(length=255), nullable=False),
        sa.Column('down_since', sa.DateTime(timezone=True), nullable=False),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('reported_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('peer', 'executor', name=op.f('pk_peer_status')),
    )


def downgrade() -> None:
    op.drop_table('peer_status')
