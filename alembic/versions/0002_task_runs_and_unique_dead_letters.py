"""task runs and lost runs; one dead letter per message

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 22:00:00

"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('runs', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('lost', sa.Integer(), server_default='0', nullable=False))
    # Until now attempts counted every start: that is what runs means now.
    op.execute("UPDATE tasks SET runs = attempts")
    # Keep the newest dead letter per message before the index makes them unique.
    op.execute("DELETE FROM dead_letters WHERE message_id IS NOT NULL AND id NOT IN "
               "(SELECT max(id) FROM dead_letters WHERE message_id IS NOT NULL GROUP BY source, message_id)")
    with op.batch_alter_table('dead_letters', schema=None) as batch_op:
        batch_op.drop_index('ix_dead_letters_source_message_id')
        batch_op.create_index('ix_dead_letters_source_message_id', ['source', 'message_id'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('dead_letters', schema=None) as batch_op:
        batch_op.drop_index('ix_dead_letters_source_message_id')
        batch_op.create_index('ix_dead_letters_source_message_id', ['source', 'message_id'], unique=False)
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_column('lost')
        batch_op.drop_column('runs')
