"""local provider: job queue, events and checkpoints

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'local_jobs',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('key_id', sa.String(length=64), nullable=True),
        sa.Column('status', sa.String(length=32), nullable=False),
        sa.Column('model', sa.Text(), nullable=False),
        sa.Column('training_file', sa.String(length=64), nullable=False),
        sa.Column('validation_file', sa.String(length=64), nullable=True),
        sa.Column('method', sa.JSON(), nullable=False),
        sa.Column('hyperparameters', sa.JSON(), nullable=False),
        sa.Column('seed', sa.BigInteger(), nullable=False),
        sa.Column('suffix', sa.String(length=64), nullable=True),
        sa.Column('metadata', sa.JSON(), nullable=True),
        sa.Column('fine_tuned_model', sa.Text(), nullable=True),
        sa.Column('trained_tokens', sa.BigInteger(), nullable=True),
        sa.Column('error', sa.JSON(), nullable=True),
        sa.Column('result_files', sa.JSON(), nullable=True),
        sa.Column('created_at', sa.BigInteger(), nullable=False),
        sa.Column('started_at', sa.BigInteger(), nullable=True),
        sa.Column('finished_at', sa.BigInteger(), nullable=True),
        sa.Column('estimated_finish', sa.BigInteger(), nullable=True),
        sa.Column('claimed_by', sa.String(length=200), nullable=True),
        sa.Column('heartbeat_at', sa.Float(), nullable=True),
        sa.Column('pid', sa.Integer(), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('resume_from', sa.Text(), nullable=True),
        sa.Column('output_dir', sa.Text(), nullable=True),
        sa.Column('cancel_requested', sa.Boolean(), nullable=False),
        sa.Column('pause_requested', sa.Boolean(), nullable=False),
        sa.Column('paused', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_local_jobs_status', 'local_jobs', ['status'])
    op.create_index('ix_local_jobs_key_id', 'local_jobs', ['key_id'])
    op.create_table(
        'local_job_events',
        sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('job_id', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.BigInteger(), nullable=False),
        sa.Column('level', sa.String(length=8), nullable=False),
        sa.Column('type', sa.String(length=16), nullable=False),
        sa.Column('message', sa.Text(), nullable=False),
        sa.Column('data', sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint('seq'),
    )
    op.create_index('ix_local_job_events_job', 'local_job_events', ['job_id', 'seq'])
    op.create_table(
        'local_job_checkpoints',
        sa.Column('job_id', sa.String(length=64), nullable=False),
        sa.Column('step', sa.Integer(), nullable=False),
        sa.Column('metrics', sa.JSON(), nullable=False),
        sa.Column('path', sa.Text(), nullable=False),
        sa.Column('created_at', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('job_id', 'step'),
    )


def downgrade() -> None:
    op.drop_table('local_job_checkpoints')
    op.drop_index('ix_local_job_events_job', table_name='local_job_events')
    op.drop_table('local_job_events')
    op.drop_index('ix_local_jobs_key_id', table_name='local_jobs')
    op.drop_index('ix_local_jobs_status', table_name='local_jobs')
    op.drop_table('local_jobs')
