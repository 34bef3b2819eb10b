"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 00:54:17.139533

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""

    op.create_table('dead_letters',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('source', sa.String(length=255), nullable=False),
    sa.Column('message_id', sa.String(length=255), nullable=True),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dead_letters'))
    )
    with op.batch_alter_table('dead_letters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dead_letters_source_message_id'), ['source', 'message_id'], unique=False)

    op.create_table('eventhub_checkpoints',
    sa.Column('fully_qualified_namespace', sa.String(length=255), nullable=False),
    sa.Column('eventhub_name', sa.String(length=255), nullable=False),
    sa.Column('consumer_group', sa.String(length=255), nullable=False),
    sa.Column('partition_id', sa.String(length=64), nullable=False),
    sa.Column('offset', sa.String(length=64), nullable=False),
    sa.Column('sequence_number', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('fully_qualified_namespace', 'eventhub_name', 'consumer_group', 'partition_id', name=op.f('pk_eventhub_checkpoints'))
    )
    op.create_table('eventhub_ownership',
    sa.Column('fully_qualified_namespace', sa.String(length=255), nullable=False),
    sa.Column('eventhub_name', sa.String(length=255), nullable=False),
    sa.Column('consumer_group', sa.String(length=255), nullable=False),
    sa.Column('partition_id', sa.String(length=64), nullable=False),
    sa.Column('owner_id', sa.String(length=255), nullable=False),
    sa.Column('last_modified_time', sa.Double(), nullable=False),
    sa.Column('etag', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('fully_qualified_namespace', 'eventhub_name', 'consumer_group', 'partition_id', name=op.f('pk_eventhub_ownership'))
    )
    op.create_table('models',
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('project', sa.String(length=255), nullable=False),
    sa.Column('revision', sa.String(length=64), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('target_tags', sa.JSON(), nullable=False),
    sa.Column('resolution_seconds', sa.Integer(), nullable=False),
    sa.Column('model_offset', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('status_reason', sa.Text(), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('artifact', sa.LargeBinary(), nullable=True),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_models'))
    )
    op.create_table('predictions',
    sa.Column('model', sa.String(length=255), nullable=False),
    sa.Column('output', sa.String(length=64), nullable=False),
    sa.Column('tag', sa.String(length=255), nullable=False),
    sa.Column('ts', sa.DateTime(timezone=True), nullable=False),
    sa.Column('value', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('model', 'output', 'tag', 'ts', name=op.f('pk_predictions'))
    )
    op.create_table('schedule_state',
    sa.Column('model', sa.String(length=255), nullable=False),
    sa.Column('last_window_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('model', name=op.f('pk_schedule_state'))
    )
    op.create_table('task_queue',
    sa.Column('task_id', sa.String(length=64), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('available_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deliveries', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=255), nullable=True),
    sa.PrimaryKeyConstraint('task_id', name=op.f('pk_task_queue'))
    )
    with op.batch_alter_table('task_queue', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_task_queue_available_at'), ['available_at'], unique=False)

    op.create_table('tasks',
    sa.Column('task_id', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=255), nullable=False),
    sa.Column('window_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('window_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('executor', sa.String(length=255), nullable=True),
    sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('duration_ms', sa.Integer(), nullable=True),
    sa.Column('rows', sa.Integer(), nullable=True),
    sa.PrimaryKeyConstraint('task_id', name=op.f('pk_tasks'))
    )
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tasks_model_window_end'), ['model', 'window_end'], unique=False)
        batch_op.create_index(batch_op.f('ix_tasks_state_finished_at'), ['state', 'finished_at'], unique=False)




def downgrade() -> None:
    """Downgrade schema."""

    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tasks_state_finished_at'))
        batch_op.drop_index(batch_op.f('ix_tasks_model_window_end'))

    op.drop_table('tasks')
    with op.batch_alter_table('task_queue', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_task_queue_available_at'))

    op.drop_table('task_queue')
    op.drop_table('schedule_state')
    op.drop_table('predictions')
    op.drop_table('models')
    op.drop_table('eventhub_ownership')
    op.drop_table('eventhub_checkpoints')
    with op.batch_alter_table('dead_letters', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dead_letters_source_message_id'))

    op.drop_table('dead_letters')

