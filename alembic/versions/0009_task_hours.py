"""task_hours: tasks done and failed per settled hour, counted once by the scheduler

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 20:00:00

The overview's 24-hour chart counted every task finished in the last 24 hours from the ledger on a web
server's first view (430,000 rows at 9,000 models). The scheduler now counts each hour once it is settled
(latigo.storage.task_hours); the chart reads those and counts only the open hours. Empty at first: the
scheduler fills the last 25 hours on its first run. The downgrade drops it.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: Union[str, Sequence[str], None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        'task_hours',
        sa.Column('hour', sa.DateTime(timezone=True), nullable=False),
        sa.Column('done', sa.Integer(), nullable=False),
        sa.Column('failed', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('hour', name=op.f('pk_task_hours')),
    )


def downgrade() -> None:
    op.drop_table('task_hours')
